package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
)

// record is what the access log and the metrics learn about one request as
// it goes down the stack. The middleware and the handler fill it in.
type record struct {
	requestID string
	// user is the client's identity for the per-client limits and the
	// log: "key-<HMAC of the key>" or "ip-<address or IPv6 /64>".
	user string
	// outcome is set when the handler knows better than the status.
	outcome string
	// detail says what went wrong, for the log.
	detail    string
	model     string
	stream    bool
	attempts  int
	queueWait time.Duration
	// callDeadline is the call deadline of the attempt whose answer is
	// passed on: a stream's writes never run past it.
	callDeadline time.Time
	// tokens is the up-front token estimate of a chat request.
	tokens int64
	// buffered is the request body bytes reserved against the load caps.
	buffered int64
}

const recordKey = "sluice.record"

func recordOf(c echo.Context) *record {
	if r, ok := c.Get(recordKey).(*record); ok {
		return r
	}
	return &record{} // only for handlers tested without the access log
}

// setQueueWait reports the total admission wait for the load tool, on
// answers that went through admission.
func (r *record) setQueueWait(h http.Header) {
	if r.attempts > 0 {
		h.Set("X-Sluice-Queue-Wait", strconv.FormatInt(r.queueWait.Milliseconds(), 10))
	}
}

// Bounds of what the log takes from a request: a client chooses these
// strings, and must not be able to write megabytes of log per request.
const (
	maxLoggedPath   = 256
	maxLoggedModel  = 100
	maxLoggedDetail = 512
)

// truncate cuts s to at most n bytes on a UTF-8 boundary, marking the cut
// with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// requestID takes the client's X-Request-Id when it is short and plain, else
// makes one, and returns it on the response.
func requestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		id := c.Request().Header.Get(echo.HeaderXRequestID)
		if len(id) == 0 || len(id) > 128 || strings.ContainsFunc(id, func(r rune) bool { return r <= ' ' || r > '~' }) {
			id = uuid.NewString()
		}
		c.Response().Header().Set(echo.HeaderXRequestID, id)
		return next(c)
	}
}

// observe is the outermost middleware after the request ID. Whatever happens
// below it (an error, a recovered panic, a client gone), it writes the answer
// of a returned error, then counts and logs the request: this is the
// shielded end of every request, it takes no context and cannot be
// cancelled. A client gone before its answer gets none: its connection is
// closed (the status 499 is only for the log and the metrics).
func (s *gateway) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		rec := &record{requestID: c.Response().Header().Get(echo.HeaderXRequestID)}
		c.Set(recordKey, rec)

		if err := next(c); err != nil {
			e, unexpected := asAPIError(err)
			if unexpected {
				s.log.Error("unexpected handler error", "request_id", rec.requestID, "error", err)
			}
			if rec.outcome == "" {
				rec.outcome = e.Code
			}
			if !c.Response().Committed && e != errClientClosed {
				rec.setQueueWait(c.Response().Header())
				if e.Status == http.StatusUnauthorized {
					dropUnreadBody(c)
				}
				writeError(c, e)
			}
		}

		res := c.Response()
		status := res.Status
		gone := rec.outcome == errClientClosed.Code
		if gone {
			status = statusClientClosed
		}
		if rec.outcome == "" {
			rec.outcome = "ok"
		}
		elapsed := time.Since(start)
		ops := c.Path() == "/healthz" || c.Path() == "/readyz" || c.Path() == "/metrics"
		if !ops { // probes and scrapes are not traffic
			s.metrics.requests.WithLabelValues(rec.outcome).Inc()
			s.metrics.requestDuration.WithLabelValues(strconv.Itoa(status)).Observe(elapsed.Seconds())
		}
		level := slog.LevelInfo
		switch {
		case status >= 500 || rec.outcome == "stream_cut":
			level = slog.LevelWarn
		case ops:
			level = slog.LevelDebug
		}
		s.log.LogAttrs(context.WithoutCancel(c.Request().Context()), level, "request",
			slog.String("request_id", rec.requestID),
			slog.String("method", truncate(c.Request().Method, 16)),
			slog.String("path", truncate(c.Request().URL.EscapedPath(), maxLoggedPath)),
			slog.Int("status", status),
			slog.String("outcome", rec.outcome),
			slog.String("user", rec.user),
			slog.String("model", rec.model),
			slog.Bool("stream", rec.stream),
			slog.Int64("tokens_estimate", rec.tokens),
			slog.Int("attempts", rec.attempts),
			slog.Int64("queue_wait_ms", rec.queueWait.Milliseconds()),
			slog.String("detail", truncate(rec.detail, maxLoggedDetail)),
			slog.Int64("bytes_out", res.Size),
			slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
		)
		if gone && !res.Committed {
			// No answer at all rather than a status nobody defined: net/http
			// closes the connection quietly.
			panic(http.ErrAbortHandler)
		}
		return nil
	}
}

// recoverPanic turns a panic below it into errInternal (a clean answer, no
// stack to the client) and logs the stack. Deferred cleanups of the handler,
// the lease release among them, have run by the time it recovers.
func (s *gateway) recoverPanic(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			r := recover()
			if r == nil {
				return
			}
			if r == http.ErrAbortHandler { // net/http's own abort: let it through
				panic(r)
			}
			s.metrics.panics.Inc()
			s.log.Error("panic while handling a request",
				"request_id", recordOf(c).requestID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			recordOf(c).outcome = "panic"
			err = errInternal
		}()
		return next(c)
	}
}

// unreadBodyGrace bounds how long, after an error answer, the rest of an
// unread request body may take to arrive before the connection is closed.
const unreadBodyGrace = time.Second

// dropUnreadBody makes a client turned away before its request's body was
// read (401: no key, a wrong key) end the connection soon: after the
// handler, net/http reads and discards up to 256 KiB of the body, for as
// long as the read timeout (the request timeout), from a client that may
// send it one byte at a time, while the connection counts as busy against
// SLUICE_MAX_CONNS: a client with no key could so hold every connection of
// the listener. The drain gets unreadBodyGrace, then the connection closes.
// (Answers to clients with a key, e.g. 429 past a cap, keep net/http's own
// drain: they are the client's own limits, and closing under a large body
// still being sent can cost the client its answer.)
func dropUnreadBody(c echo.Context) {
	req := c.Request()
	if req.ContentLength == 0 || req.Body == nil || req.Body == http.NoBody {
		return
	}
	c.Response().Header().Set(echo.HeaderConnection, "close")
	_ = http.NewResponseController(c.Response().Writer).SetReadDeadline(time.Now().Add(unreadBodyGrace))
}
