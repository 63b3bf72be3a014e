package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"mime"
	"net"
	"net/http"
	"net/textproto"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

// maxResponseBody bounds a non-streaming vendor answer, which the gateway
// buffers so it can release the lease before writing to a slow client, and
// retry a body cut short.
const maxResponseBody = 32 << 20

// outbound is a client request, read and checked once, sent again unchanged
// on every attempt.
type outbound struct {
	method string
	url    string
	header http.Header
	body   []byte
}

// proxy forwards a /v1/* request to the vendor through the rest of the stack
// (admission, call deadline, retries) and passes the answer back.
func (s *Server) proxy(c echo.Context) error {
	req := c.Request()
	rec := recordOf(c)
	// Clean the decoded path, so "/v1/../x" or "/v1/%2e%2e/x" cannot reach
	// vendor paths outside /v1 with the vendor key.
	p := path.Clean(req.URL.Path)
	if !strings.HasPrefix(p, "/v1/") {
		return errBadPath
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return errTooLarge
		}
		return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "unreadable_body",
			Message: "the request body could not be read"}
	}
	if p == "/v1/chat/completions" || len(body) > 0 && isJSON(req.Header) {
		r, err := parseChatRequest(body)
		if err != nil {
			return errBadJSON(err.Error())
		}
		rec.model, rec.stream = r.Model, r.Stream
	}
	u := *s.cfg.UpstreamURL
	u.Path += p
	u.RawQuery = req.URL.RawQuery
	out := &outbound{method: req.Method, url: u.String(), header: req.Header.Clone(), body: body}
	stripHeaders(out.header, dropRequestHeaders)
	out.header.Set(echo.HeaderXRequestID, rec.requestID)
	if s.cfg.UpstreamAPIKey != "" {
		out.header.Set(echo.HeaderAuthorization, "Bearer "+string(s.cfg.UpstreamAPIKey))
	}
	return s.forward(c, out)
}

// dropRequestHeaders are not forwarded: hop-by-hop headers, the client's
// credentials (the vendor key replaces them), headers the transport sets
// itself (Accept-Encoding: it then decompresses transparently, so streams can
// be read), forwarding headers, and the vendor headers that choose which
// organization or project the vendor key bills: that is the operator's call.
var dropRequestHeaders = []string{
	"Authorization", "Proxy-Authorization", "Cookie", "Host", "Content-Length", "Accept-Encoding",
	"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip",
	"Openai-Organization", "Openai-Project",
}

// dropResponseHeaders are not passed back: hop-by-hop headers, cookies of the
// vendor, and the headers the gateway sets itself.
var dropResponseHeaders = []string{"Set-Cookie", "Content-Length", "X-Request-Id"}

// hopByHop are the RFC 9110 connection-specific headers.
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// stripHeaders removes the hop-by-hop headers, those named by Connection,
// and drop.
func stripHeaders(h http.Header, drop []string) {
	for _, v := range h.Values("Connection") {
		for name := range strings.SplitSeq(v, ",") {
			h.Del(textproto.TrimString(name))
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
	for _, name := range drop {
		h.Del(name)
	}
}

func isJSON(h http.Header) bool { return mediaType(h) == echo.MIMEApplicationJSON }

func isEventStream(h http.Header) bool { return mediaType(h) == "text/event-stream" }

func mediaType(h http.Header) string {
	mt, _, _ := mime.ParseMediaType(h.Get(echo.HeaderContentType))
	return mt
}

// chatRequest is what the gateway reads of a JSON request body; the vendor
// validates the rest.
type chatRequest struct {
	Model  string
	Stream bool
}

// parseChatRequest checks that body is a JSON object and reads its "model"
// (for the log) and "stream" fields. Its errors are fixed sentences fit for a
// client, not the decoder's.
func parseChatRequest(body []byte) (chatRequest, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		if _, ok := errors.AsType[*json.UnmarshalTypeError](err); ok || err == nil {
			return chatRequest{}, errors.New("the request body must be a JSON object")
		}
		return chatRequest{}, errors.New("the request body is not valid JSON")
	}
	var r chatRequest
	if raw, ok := fields["stream"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &r.Stream) != nil {
			return chatRequest{}, errors.New(`"stream" must be a boolean`)
		}
	}
	if raw, ok := fields["model"]; ok && json.Unmarshal(raw, &r.Model) == nil && len(r.Model) > 100 {
		r.Model = r.Model[:100]
	}
	return r, nil
}

// respond passes the vendor's answer of a successful attempt to the client,
// then ends the call (lease released, shielded) whatever happens.
func (s *Server) respond(c echo.Context, cl *call) error {
	defer cl.finish()
	rec := recordOf(c)
	res := c.Response()
	// A client that stops reading must not hold the lease past the request
	// deadline: a blocked write fails at it. (net/http clears the deadline
	// after the request.)
	if deadline, ok := c.Request().Context().Deadline(); ok {
		_ = http.NewResponseController(res).SetWriteDeadline(deadline)
	}
	h := cl.resp.Header.Clone()
	stripHeaders(h, dropResponseHeaders)
	maps.Copy(res.Header(), h)
	rec.setQueueWait(res.Header())
	if cl.resp.StatusCode >= 400 {
		rec.outcome = "vendor_4xx"
	}
	if cl.body == nil {
		return s.stream(c, cl)
	}
	if code := cl.resp.StatusCode; code != http.StatusNoContent && code != http.StatusNotModified {
		res.Header().Set(echo.HeaderContentLength, strconv.Itoa(len(cl.body)))
	}
	res.WriteHeader(cl.resp.StatusCode)
	if _, err := res.Write(cl.body); err != nil {
		rec.outcome, rec.detail = errClientClosed.Code, "writing the answer failed"
	}
	return nil
}

// stream passes Server-Sent Events through as they come, one flush per read,
// while the call (and its lease) stays open. The status is sent first, so
// from here on nothing can be retried or changed: a stream that breaks is
// recorded (outcome stream_cut, or the client gone, or the request deadline)
// and simply ends. A stream is complete only when the vendor sent its
// "data: [DONE]" line before the end.
func (s *Server) stream(c echo.Context, cl *call) error {
	rec := recordOf(c)
	rec.stream = true
	res := c.Response()
	res.Header().Set("X-Accel-Buffering", "no") // no buffering in an nginx in front
	res.WriteHeader(cl.resp.StatusCode)
	res.Flush()
	var done doneScanner
	buf := make([]byte, 16<<10)
	for {
		n, err := cl.resp.Body.Read(buf)
		if n > 0 {
			done.scan(buf[:n])
			if _, werr := res.Write(buf[:n]); werr != nil {
				rec.outcome, rec.detail = errClientClosed.Code, "the client went away during the stream"
				return nil
			}
			res.Flush()
		}
		switch {
		case errors.Is(err, io.EOF):
			if !done.complete() {
				rec.outcome, rec.detail = "stream_cut", "the vendor ended the stream without data: [DONE]"
			}
			return nil
		case err != nil:
			cl.failed(err)
			f := callFailure(c.Request().Context(), cl.ctx, err)
			rec.outcome, rec.detail = "stream_cut", "the stream broke: "+f.detail
			if f.answer != nil {
				rec.outcome = f.answer.Code
			}
			return nil
		}
	}
}

// doneMarker is the data line that ends an OpenAI stream.
var doneMarker = []byte("data: [DONE]")

// doneScanner watches an SSE byte stream, across read boundaries, for the
// line "data: [DONE]".
type doneScanner struct {
	line []byte // the start of the current line, at most len(doneMarker)+1 bytes
	seen bool
}

func (d *doneScanner) scan(p []byte) {
	for _, b := range p {
		if b == '\n' {
			d.seen = d.seen || d.isMarker()
			d.line = d.line[:0]
		} else if len(d.line) <= len(doneMarker) {
			d.line = append(d.line, b)
		}
	}
}

func (d *doneScanner) isMarker() bool {
	return bytes.Equal(bytes.TrimSuffix(d.line, []byte("\r")), doneMarker)
}

// complete reports whether the marker was seen, as a last line too.
func (d *doneScanner) complete() bool { return d.seen || d.isMarker() }

// newTransport returns the vendor transport with explicit timeouts, Go's
// counterparts of httpx's connect/read/write/pool timeouts: dial and TLS
// handshake (connect), response headers (read; the call deadline bounds the
// body, and the write), and connection limits (pool; waiting for a
// connection is bounded by the call deadline too). The semaphore caps calls
// cluster-wide, so one replica never needs more than Concurrency connections;
// the pool cap is a guard against leaks, not the throttle.
func newTransport(cfg Config) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.CallTimeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          2 * cfg.Concurrency,
		MaxIdleConnsPerHost:   cfg.Concurrency,
		MaxConnsPerHost:       2 * cfg.Concurrency,
		ForceAttemptHTTP2:     true,
	}
}
