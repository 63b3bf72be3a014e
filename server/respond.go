package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicehq/sluice/internal/guarded"
)

// passedResponseHeaders are the vendor headers the client receives: what
// describes the answer's body, the vendor's Retry-After and model facts.
// Everything else stays here: cookies, CORS, authentication challenges,
// the vendor's organization, project and rate-limit headers (they describe
// the vendor key, not this client), hop-by-hop headers.
var passedResponseHeaders = []string{
	"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Type", "Etag",
	"Last-Modified", "Openai-Model", "Openai-Processing-Ms", "Openai-Version", "Retry-After", "Retry-After-Ms",
}

// passHeaders copies the allowlisted vendor headers to the client's, where
// the gateway did not set them itself: its own headers win.
func passHeaders(dst, vendor http.Header) {
	for _, name := range passedResponseHeaders {
		if v := vendor.Values(name); len(v) > 0 && dst.Get(name) == "" {
			dst[name] = append([]string(nil), v...)
		}
	}
}

// writeChunk is how much of a buffered answer is written per write deadline.
const writeChunk = 64 << 10

// respond passes the vendor's answer of a successful attempt to the client,
// then closes it (a stream's lease released, shielded) whatever happens. A
// non-streaming answer was read whole by the guarded call, its lease
// released before this writes a byte to a possibly slow client.
func (s *gateway) respond(c echo.Context, resp *http.Response) error {
	defer resp.Body.Close()
	rec := recordOf(c)
	res := c.Response()
	passHeaders(res.Header(), resp.Header)
	rec.setQueueWait(res.Header())
	if resp.StatusCode >= 400 {
		rec.outcome = "vendor_4xx"
	}
	if isEventStream(resp.Header) {
		return s.stream(c, resp)
	}
	if code := resp.StatusCode; code != http.StatusNoContent && code != http.StatusNotModified {
		res.Header().Set(echo.HeaderContentLength, strconv.FormatInt(resp.ContentLength, 10))
	}
	// The lease is released already; each write still has its deadline,
	// never past the request's, so a client that stops reading, or reads
	// just fast enough, frees its connection and the buffered answer by
	// the request deadline at the latest.
	rc := http.NewResponseController(res)
	res.WriteHeader(resp.StatusCode)
	buf := make([]byte, min(writeChunk, max(resp.ContentLength, 1)))
	requestDeadline, hasDeadline := c.Request().Context().Deadline()
	for {
		n, _ := io.ReadFull(resp.Body, buf) // a buffered answer: only its end stops the read
		if n == 0 {
			return nil
		}
		d := time.Now().Add(s.cfg.WriteTimeout)
		if hasDeadline && d.After(requestDeadline) {
			d = requestDeadline
		}
		_ = rc.SetWriteDeadline(d)
		if _, err := res.Write(buf[:n]); err != nil {
			clientWriteFailed(rec, err)
			return nil
		}
	}
}

// stream passes gateway-Sent Events through as they come, one flush per read,
// while the call (and its lease) stays open. Each write has a short deadline
// (SLUICE_WRITE_TIMEOUT), never past the call deadline: a client that stops
// reading cannot hold the vendor slot beyond it. The status is sent first,
// so from here on nothing can be retried or changed: a stream that breaks is
// recorded (outcome stream_cut, or the client gone or too slow, or the
// request deadline) and simply ends. A stream is complete only when the
// vendor sent its "data: [DONE]" line before the end.
func (s *gateway) stream(c echo.Context, resp *http.Response) error {
	rec := recordOf(c)
	rec.stream = true
	res := c.Response()
	rc := http.NewResponseController(res)
	callDeadline := rec.callDeadline
	write := func(p []byte) error {
		d := time.Now().Add(s.cfg.WriteTimeout)
		if d.After(callDeadline) {
			d = callDeadline
		}
		_ = rc.SetWriteDeadline(d)
		if len(p) > 0 {
			if _, err := res.Write(p); err != nil {
				return err
			}
		}
		return rc.Flush()
	}
	res.Header().Set("X-Accel-Buffering", "no") // no buffering in an nginx in front
	res.WriteHeader(resp.StatusCode)
	if err := write(nil); err != nil {
		clientWriteFailed(rec, err)
		return nil
	}
	var done doneScanner
	buf := make([]byte, 16<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			done.scan(buf[:n])
			if werr := write(buf[:n]); werr != nil {
				clientWriteFailed(rec, werr)
				return nil
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			if !done.complete() {
				rec.outcome, rec.detail = "stream_cut", "the vendor ended the stream without data: [DONE]"
			}
			return nil
		case err != nil:
			rec.outcome, rec.detail = "stream_cut", "the stream broke: the connection to the vendor failed"
			if se, ok := errors.AsType[*guarded.StreamError](err); ok {
				rec.detail = "the stream broke: " + se.Detail
			}
			if ctx := c.Request().Context(); ctx.Err() != nil {
				rec.outcome, rec.detail = endedAnswer(ctx).Code, "the stream broke: the request ended"
			}
			return nil
		}
	}
}

// clientWriteFailed records why writing the answer failed: the client did
// not read in time (its write deadline passed), or went away.
func clientWriteFailed(rec *record, err error) {
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		rec.outcome, rec.detail = "client_too_slow", "the client did not read the answer in time"
		return
	}
	rec.outcome, rec.detail = errClientClosed.Code, "the client went away during the answer"
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
