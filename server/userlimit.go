package server

import (
	"sync"

	"github.com/labstack/echo/v4"
)

// loadCaps caps what one replica holds for its clients: requests in progress
// (waiting in the queue included) and request body bytes buffered, in all
// and per client. Past a cap a request is answered at once, 503 for the
// replica's cap (another replica may have room) and 429 for the client's,
// instead of being held: memory stays bounded whatever clients send.
type loadCaps struct {
	maxRequests, clientMaxRequests int
	maxBuffered, clientMaxBuffered int64

	mu       sync.Mutex
	requests int
	buffered int64
	clients  map[string]*clientLoad
}

type clientLoad struct {
	requests int
	buffered int64
}

func newLoad(cfg Config) *loadCaps {
	return &loadCaps{
		maxRequests: cfg.MaxRequests, clientMaxRequests: cfg.ClientMaxRequests,
		maxBuffered: cfg.MaxBuffered, clientMaxBuffered: cfg.ClientMaxBuffered,
		clients: map[string]*clientLoad{},
	}
}

// enter counts a request of client in, or says which cap it hits.
func (l *loadCaps) enter(client string) *apiError {
	l.mu.Lock()
	defer l.mu.Unlock()
	cl := l.clients[client]
	switch {
	case l.requests >= l.maxRequests:
		return errOverloaded
	case cl != nil && cl.requests >= l.clientMaxRequests:
		return errClientOverloaded
	}
	if cl == nil {
		cl = &clientLoad{}
		l.clients[client] = cl
	}
	cl.requests++
	l.requests++
	return nil
}

// reserve takes n more bytes of buffer for a request of client (which
// entered), or says which cap it hits.
func (l *loadCaps) reserve(client string, n int64) *apiError {
	l.mu.Lock()
	defer l.mu.Unlock()
	cl := l.clients[client]
	switch {
	case l.buffered+n > l.maxBuffered:
		return errOverloaded
	case cl.buffered+n > l.clientMaxBuffered:
		return errClientOverloaded
	}
	cl.buffered += n
	l.buffered += n
	return nil
}

// leave counts a request of client out, with the bytes it reserved.
func (l *loadCaps) leave(client string, buffered int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cl := l.clients[client]
	cl.requests--
	cl.buffered -= buffered
	l.requests--
	l.buffered -= buffered
	if cl.requests == 0 {
		delete(l.clients, client)
	}
}

// limitLoad admits a request against the caps on requests in progress, and
// gives back what it held (its buffered bytes included) when it ends.
func (s *gateway) limitLoad(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		rec := recordOf(c)
		if e := s.load.enter(rec.user); e != nil {
			s.metrics.loadRejections.WithLabelValues(e.Code).Inc()
			return e
		}
		defer func() { s.load.leave(rec.user, rec.buffered) }()
		return next(c)
	}
}

// reserveBody takes n bytes of the load caps for the body of the request of
// rec.
func (s *gateway) reserveBody(rec *record, n int64) error {
	if e := s.load.reserve(rec.user, n); e != nil {
		s.metrics.loadRejections.WithLabelValues(e.Code).Inc()
		return e
	}
	rec.buffered += n
	return nil
}

// limitUser applies the per-user REJECT limit (SLUICE_USER_RATE). A store
// failure fails closed, as admission does.
func (s *gateway) limitUser(next echo.HandlerFunc) echo.HandlerFunc {
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
