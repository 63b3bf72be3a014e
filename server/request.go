package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
)

// limitBody answers 413 for a body declared too large, and makes reading a
// larger undeclared (chunked) body fail with *http.MaxBytesError, which the
// handler answers with 413 too.
func (s *gateway) limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if req.ContentLength > s.cfg.MaxBody {
			return errTooLarge
		}
		req.Body = http.MaxBytesReader(c.Response(), req.Body, s.cfg.MaxBody)
		return next(c)
	}
}

// outbound is a client request, read and checked once, sent again unchanged
// on every attempt.
type outbound struct {
	method string
	url    string
	header http.Header
	body   []byte
}

// proxy forwards a /v1/* request to the vendor through the rest of the stack
// (retries, admission, the call) and passes the answer back.
func (s *gateway) proxy(c echo.Context) error {
	req := c.Request()
	rec := recordOf(c)
	escaped, ok := forwardPath(req.URL)
	if !ok {
		return errBadPath
	}
	if ce := req.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		// The gateway checks the body the vendor will read; it does not
		// inflate bodies (nor forward what it did not check).
		return errEncoding
	}
	body, err := s.readBody(req, rec)
	if err != nil {
		return err
	}
	if req.Method == http.MethodPost && req.URL.Path == "/v1/chat/completions" || len(body) > 0 && isJSON(req.Header) {
		r, err := parseChatRequest(body)
		if err != nil {
			return errBadJSON(err.Error())
		}
		rec.model, rec.stream, rec.tokens = r.Model, r.Stream, r.estimate()
	}
	out := &outbound{method: req.Method, url: s.upstreamURL(req.URL, escaped), header: s.forwardHeaders(req.Header), body: body}
	out.header.Set(echo.HeaderXRequestID, rec.requestID)
	if s.cfg.UpstreamAPIKey != "" {
		out.header.Set(echo.HeaderAuthorization, "Bearer "+string(s.cfg.UpstreamAPIKey))
	}
	resp, err := s.forward(req.Context(), out, rec)
	if err != nil {
		return err
	}
	return s.respond(c, resp)
}

// forwardPath returns the path to forward, as the client escaped it ("%2F"
// stays "%2F"), when it is under /v1/ and has no "." or ".." segment, even
// an escaped one, that could climb out of /v1 with the vendor key.
func forwardPath(u *url.URL) (string, bool) {
	p := u.EscapedPath()
	if !strings.HasPrefix(p, "/v1/") {
		return "", false
	}
	for seg := range strings.SplitSeq(p, "/") {
		if d, err := url.PathUnescape(seg); err != nil || d == "." || d == ".." {
			return "", false
		}
	}
	return p, true
}

// upstreamURL is the vendor URL of a client request: the base URL, the
// client's path as it was escaped, and its query.
func (s *gateway) upstreamURL(client *url.URL, escaped string) string {
	u := *s.cfg.UpstreamURL
	u.RawPath = u.EscapedPath() + escaped
	u.Path += client.Path
	u.RawQuery = client.RawQuery
	return u.String()
}

// forwardedRequestHeaders are the client headers the vendor receives, with
// those of SLUICE_FORWARD_HEADERS; every other one stays here (credentials,
// hop-by-hop and forwarding headers, method and URL overrides, encodings,
// the vendor's organization and project headers, which are the operator's
// choice). The gateway adds the vendor key, X-Request-Id and Content-Length
// itself.
var forwardedRequestHeaders = []string{"Accept", "Content-Type", "Idempotency-Key", "Openai-Beta", "User-Agent"}

func (s *gateway) forwardHeaders(in http.Header) http.Header {
	out := make(http.Header, len(forwardedRequestHeaders)+2)
	for _, name := range slices.Concat(forwardedRequestHeaders, s.cfg.ForwardHeaders) {
		if v := in.Values(name); len(v) > 0 {
			out[name] = append([]string(nil), v...)
		}
	}
	return out
}

// readBody reads the request body whole (every attempt resends it), within
// the load caps: a declared length is reserved before reading, a chunked
// body as it grows.
func (s *gateway) readBody(req *http.Request, rec *record) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0 {
		return nil, nil
	}
	if n := req.ContentLength; n > 0 { // net/http holds the body to its declared length
		if err := s.reserveBody(rec, n); err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(req.Body, buf); err != nil {
			return nil, bodyReadError(err)
		}
		return buf, nil
	}
	const step = 64 << 10 // a chunked body is reserved as it grows
	var buf []byte
	for {
		if len(buf) == cap(buf) {
			// Doubling, up to one byte past the limit (the MaxBytesReader
			// reads it to tell); what is allocated is what is reserved.
			grow := min(max(step, len(buf)), int(s.cfg.MaxBody+1)-len(buf))
			if err := s.reserveBody(rec, int64(grow)); err != nil {
				return nil, err
			}
			nb := make([]byte, len(buf), len(buf)+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := req.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, bodyReadError(err)
		}
	}
}

// bodyReadError answers a body that could not be read: too large (413), not
// all there by the read timeout (408), or broken off (400).
func bodyReadError(err error) *apiError {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return errTooLarge
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return errBodyTimeout
	}
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "unreadable_body",
		Message: "the request body could not be read"}
}

func isJSON(h http.Header) bool { return mediaType(h) == echo.MIMEApplicationJSON }

func isEventStream(h http.Header) bool { return mediaType(h) == "text/event-stream" }

func mediaType(h http.Header) string {
	mt, _, _ := mime.ParseMediaType(h.Get(echo.HeaderContentType))
	return mt
}

// defaultMaxTokens is the output allowance of a request that names none.
const defaultMaxTokens = 1024

// chatRequest is what the gateway reads of a JSON request body; the vendor
// validates the rest.
type chatRequest struct {
	Model  string
	Stream bool
	// MaxTokens is max_completion_tokens, else max_tokens; -1 if neither.
	MaxTokens int64
	// N is the number of choices asked for (1 when not given).
	N int64
	// TextChars counts the characters of the message texts.
	TextChars int64
}

// estimate is the token cost of the request as OpenAI counts it up front:
// a quarter of the characters of the messages, plus the output allowance of
// every choice.
func (r chatRequest) estimate() int64 {
	out := r.MaxTokens
	if out < 0 {
		out = defaultMaxTokens
	}
	return (r.TextChars+3)/4 + out*r.N
}

// parseChatRequest checks that body is a JSON object and reads its "model",
// "stream", "max_tokens", "max_completion_tokens", "n" and the lengths of
// the message texts, walking the bytes once without building a value of the
// whole: a body of a million keys costs a scan, not a map. Names match
// exactly and the last of duplicates wins, as for the vendor's parser. Its
// errors are fixed sentences fit for a client, not the decoder's.
func parseChatRequest(body []byte) (chatRequest, error) {
	r := chatRequest{MaxTokens: -1, N: 1}
	if !json.Valid(body) {
		return r, errors.New("the request body is not valid JSON")
	}
	w := walker{b: body}
	if w.ws(); w.b[w.i] != '{' {
		return r, errors.New("the request body must be a JSON object")
	}
	maxTokens, maxCompletion := int64(-1), int64(-1)
	var err error
	w.members(func(name []byte) {
		var e error
		switch string(name) {
		case "model":
			r.Model = ""
			if v := w.value(); v[0] == '"' {
				var m string
				_ = json.Unmarshal(v, &m)
				r.Model = truncate(m, maxLoggedModel)
			}
		case "stream":
			switch string(w.value()) {
			case "true":
				r.Stream = true
			case "false", "null":
				r.Stream = false
			default:
				e = errors.New(`"stream" must be a boolean`)
			}
		case "max_tokens":
			maxTokens, e = count(w.value(), 0, `"max_tokens" must be null or a whole number`)
		case "max_completion_tokens":
			maxCompletion, e = count(w.value(), 0, `"max_completion_tokens" must be null or a whole number`)
		case "n":
			r.N, e = count(w.value(), 1, `"n" must be null or a positive whole number`)
			if r.N < 0 {
				r.N = 1
			}
		case "messages":
			r.TextChars = w.messageChars()
		default:
			w.skip()
		}
		if err == nil {
			err = e
		}
	})
	r.MaxTokens = maxTokens
	if maxCompletion >= 0 {
		r.MaxTokens = maxCompletion
	}
	return r, err
}

// count reads a JSON count of at least least, or null (-1).
func count(v []byte, least int64, msg string) (int64, error) {
	if string(v) == "null" {
		return -1, nil
	}
	var n json.Number
	if json.Unmarshal(v, &n) == nil {
		if i, err := n.Int64(); err == nil && i >= least && i < 1<<40 {
			return i, nil
		}
	}
	return -1, errors.New(msg)
}

// walker reads JSON that json.Valid accepted, so it needs no error paths.
type walker struct {
	b []byte
	i int
}

func (w *walker) ws() {
	for w.i < len(w.b) && (w.b[w.i] == ' ' || w.b[w.i] == '\t' || w.b[w.i] == '\n' || w.b[w.i] == '\r') {
		w.i++
	}
}

// str passes the string at w.i and returns it with its quotes, unescaped.
func (w *walker) str() []byte {
	start := w.i
	for w.i++; w.b[w.i] != '"'; w.i++ {
		if w.b[w.i] == '\\' {
			w.i++
		}
	}
	w.i++
	return w.b[start:w.i]
}

// value passes the value at w.i and returns its bytes.
func (w *walker) value() []byte {
	w.ws()
	start := w.i
	w.skip()
	return w.b[start:w.i]
}

func (w *walker) skip() {
	w.ws()
	switch w.b[w.i] {
	case '"':
		w.str()
	case '{', '[':
		for depth := 0; ; {
			switch w.b[w.i] {
			case '"':
				w.str()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			w.i++
			if depth == 0 {
				return
			}
		}
	default: // a number, true, false or null
		for w.i < len(w.b) && !strings.ContainsRune(",}] \t\n\r", rune(w.b[w.i])) {
			w.i++
		}
	}
}

// members calls f with the name of each member of the object at w.i, with
// w at its value; f passes the value.
func (w *walker) members(f func(name []byte)) {
	w.ws()
	w.i++ // {
	for {
		w.ws()
		switch w.b[w.i] {
		case '}':
			w.i++
			return
		case ',':
			w.i++
			w.ws()
		}
		raw := w.str()
		w.ws()
		w.i++ // :
		w.ws()
		name := raw[1 : len(raw)-1]
		if bytes.IndexByte(name, '\\') >= 0 {
			var s string
			_ = json.Unmarshal(raw, &s)
			name = []byte(s)
		}
		f(name)
	}
}

// elements calls f for each element of the array at w.i, with w at it; f
// passes the element.
func (w *walker) elements(f func()) {
	w.ws()
	w.i++ // [
	for {
		w.ws()
		switch w.b[w.i] {
		case ']':
			w.i++
			return
		case ',':
			w.i++
			w.ws()
		}
		f()
	}
}

// messageChars passes the "messages" value and counts the characters of
// their texts: a string "content", or the "text" of its parts.
func (w *walker) messageChars() int64 {
	var n int64
	if w.ws(); w.b[w.i] != '[' {
		w.skip()
		return 0
	}
	w.elements(func() {
		if w.ws(); w.b[w.i] != '{' {
			w.skip()
			return
		}
		w.members(func(name []byte) {
			if string(name) != "content" {
				w.skip()
				return
			}
			switch w.ws(); w.b[w.i] {
			case '"':
				n += textChars(w.str())
			case '[':
				w.elements(func() {
					if w.ws(); w.b[w.i] != '{' {
						w.skip()
						return
					}
					w.members(func(name []byte) {
						if v := w.value(); string(name) == "text" && v[0] == '"' {
							n += textChars(v)
						}
					})
				})
			default:
				w.skip()
			}
		})
	})
	return n
}

// textChars counts the characters of a JSON string given with its quotes,
// an escape counting as one.
func textChars(quoted []byte) int64 {
	s := quoted[1 : len(quoted)-1]
	var n int64
	for i := 0; i < len(s); n++ {
		switch {
		case s[i] == '\\' && s[i+1] == 'u':
			i += 6
		case s[i] == '\\':
			i += 2
		default:
			_, size := utf8.DecodeRune(s[i:])
			i += size
		}
	}
	return n
}
