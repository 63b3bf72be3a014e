package server

import (
	"context"
	"errors"

	"github.com/labstack/echo/v4"
)

// errRequestDeadline is the cause of a request context whose SLA expired.
var errRequestDeadline = errors.New("server: request deadline")

// deadline bounds the whole request, retries and streaming included, by
// SLUICE_REQUEST_TIMEOUT. The handler answers 504 when the cause of its
// context's end is errRequestDeadline.
func (s *gateway) deadline(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, cancel := context.WithTimeoutCause(c.Request().Context(), s.cfg.RequestTimeout, errRequestDeadline)
		defer cancel()
		c.SetRequest(c.Request().WithContext(ctx))
		return next(c)
	}
}

// endedAnswer answers a request whose context ended: 503 when the shutdown
// cut it, 504 when the request deadline passed, else the client went away.
func endedAnswer(ctx context.Context) *apiError {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errShutdownCut):
		return errShuttingDown
	case errors.Is(cause, errRequestDeadline):
		return errSLA
	}
	return errClientClosed
}
