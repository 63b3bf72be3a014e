package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/sluicehq/sluice/internal/redisstate"
)

// record is what the access log and the metrics learn about one request as
// it goes down the stack. The middleware and the handler fill it in.
type record struct {
	requestID string
	// user is the identity of the per-user limit, already hashed when it
	// comes from a client key: "key-<hash>" or "ip-<address>".
	user string
	// outcome is set when the handler knows better than the status.
	outcome string
	// detail says what went wrong, for the log.
	detail    string
	model     string
	stream    bool
	attempts  int
	queueWait time.Duration
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
// cancelled.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
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
			if !c.Response().Committed {
				rec.setQueueWait(c.Response().Header())
				writeError(c, e)
			}
		}

		res := c.Response()
		status := res.Status
		if rec.outcome == errClientClosed.Code {
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
			slog.String("method", c.Request().Method),
			slog.String("path", c.Request().URL.Path),
			slog.Int("status", status),
			slog.String("outcome", rec.outcome),
			slog.String("user", rec.user),
			slog.String("model", rec.model),
			slog.Bool("stream", rec.stream),
			slog.Int("attempts", rec.attempts),
			slog.Int64("queue_wait_ms", rec.queueWait.Milliseconds()),
			slog.String("detail", rec.detail),
			slog.Int64("bytes_out", res.Size),
			slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
		)
		return nil
	}
}

// recoverPanic turns a panic below it into errInternal (a clean answer, no
// stack to the client) and logs the stack. Deferred cleanups of the handler,
// the lease release among them, have run by the time it recovers.
func (s *Server) recoverPanic(next echo.HandlerFunc) echo.HandlerFunc {
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

// limitBody answers 413 for a body declared too large, and makes reading a
// larger undeclared (chunked) body fail with *http.MaxBytesError, which the
// handler answers with 413 too.
func (s *Server) limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if req.ContentLength > s.cfg.MaxBody {
			return errTooLarge
		}
		req.Body = http.MaxBytesReader(c.Response(), req.Body, s.cfg.MaxBody)
		return next(c)
	}
}

// authenticate checks the client's bearer key against SLUICE_API_KEYS, in
// constant time, and sets the identity of the per-user limit: the hashed key,
// or without auth the client IP (from X-Forwarded-For only with
// SLUICE_TRUST_PROXY; see Server.New).
func (s *Server) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		rec := recordOf(c)
		if len(s.keys) == 0 {
			rec.user = "ip-" + c.RealIP()
			return next(c)
		}
		scheme, key, _ := strings.Cut(c.Request().Header.Get(echo.HeaderAuthorization), " ")
		key = strings.TrimSpace(key)
		if !strings.EqualFold(scheme, "Bearer") || key == "" {
			return errUnauthorized("missing_api_key", "missing API key: send Authorization: Bearer <key>")
		}
		if !s.validKey(key) {
			return errUnauthorized("invalid_api_key", "invalid API key")
		}
		rec.user = "key-" + redisstate.HashKey(key)[:16]
		return next(c)
	}
}

// validKey compares the SHA-256 of key with the digest of every accepted key,
// without stopping at a match, so the time taken says nothing about the keys.
func (s *Server) validKey(key string) bool {
	sum := sha256.Sum256([]byte(key))
	match := 0
	for _, k := range s.keys {
		match |= subtle.ConstantTimeCompare(sum[:], k[:])
	}
	return match == 1
}

// limitUser applies the per-user REJECT limit (SLUICE_USER_RATE). A store
// failure fails closed, as admission does.
func (s *Server) limitUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.users == nil {
			return next(c)
		}
		ctx := c.Request().Context()
		d, err := s.users.Allow(ctx, recordOf(c).user)
		if err != nil {
			if ctx.Err() != nil { // the client went away, or the shutdown cut the request
				return endedAnswer(ctx)
			}
			s.metrics.redisErrors.WithLabelValues("user_limit").Inc()
			s.log.Warn("per-user limit failed", "request_id", recordOf(c).requestID, "error", err)
			return errBackend(s.cfg.QueueTimeout)
		}
		d.SetHeaders(c.Response().Header())
		if !d.Allowed {
			s.metrics.userRejections.Inc()
			return errUserLimited
		}
		return next(c)
	}
}

// errRequestDeadline is the cause of a request context whose SLA expired.
var errRequestDeadline = errors.New("server: request deadline")

// deadline bounds the whole request, retries and streaming included, by
// SLUICE_REQUEST_TIMEOUT. The handler answers 504 when the cause of its
// context's end is errRequestDeadline.
func (s *Server) deadline(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, cancel := context.WithTimeoutCause(c.Request().Context(), s.cfg.RequestTimeout, errRequestDeadline)
		defer cancel()
		c.SetRequest(c.Request().WithContext(ctx))
		return next(c)
	}
}
