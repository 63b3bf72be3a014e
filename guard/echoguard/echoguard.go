// Package echoguard is the edge of sluice's stack as Echo middleware, for an
// app that calls its vendor through a guard.Transport: the per-user REJECT
// limit (UserLimit: 429 with Retry-After and RateLimit headers) and the
// request deadline, the SLA (Deadline: 504). With package guard, an Echo app
// gets the whole stack from two imports:
//
//	e.Use(echoguard.UserLimit(users), echoguard.Deadline(60*time.Second))
//	client := openai.NewClient(option.WithHTTPClient(&http.Client{Transport: t}), option.WithMaxRetries(0))
//
// Both are configured like Echo's own middleware: a Config with a Skipper,
// a Default...Config, and ...WithConfig filling the zero fields from it.
// Their default answers use the OpenAI error shape
// {"error":{"message","type","code"}}.
package echoguard

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicehq/sluice/limiter"
)

// ErrDeadline is the cause of a request context whose deadline, set by
// Deadline, passed.
var ErrDeadline = errors.New("echoguard: request deadline")

// UserLimitConfig configures UserLimitWithConfig.
type UserLimitConfig struct {
	// Skipper skips the limit for some requests. Default: none skipped.
	Skipper func(c echo.Context) bool
	// Limiter is the per-user limit, shared by every replica through
	// Redis. Required.
	Limiter *limiter.KeyLimiter
	// IdentifierExtractor names the user of a request: an API key, a user
	// id. Default: the client's IP as the Echo app's IPExtractor reads it,
	// or the direct peer's when the app set none (never a client-written
	// X-Forwarded-For).
	IdentifierExtractor func(c echo.Context) (string, error)
	// ErrorHandler answers a request whose identifier could not be
	// extracted, or whose limit could not be checked (Redis down: the limit
	// fails closed). Default: 503 backend_unavailable, or 403 when the
	// extractor failed.
	ErrorHandler func(c echo.Context, err error) error
	// DenyHandler answers a request over its limit; the Retry-After and
	// RateLimit headers are set already. Default: 429 rate_limit_exceeded.
	DenyHandler func(c echo.Context, identifier string, d limiter.Decision) error
}

// clientIP is the default identifier: the client's address as the Echo
// app's IPExtractor reads it when the app set one (e.g. behind its trusted
// proxies), else the direct peer's. Never X-Forwarded-For by default: a
// client writes that header itself, and would pick a new identity, and a
// new limit, per request.
func clientIP(c echo.Context) (string, error) {
	if c.Echo().IPExtractor != nil {
		return c.RealIP(), nil
	}
	return echo.ExtractIPDirect()(c.Request()), nil
}

// errExtract marks an IdentifierExtractor's error for the default
// ErrorHandler.
var errExtract = errors.New("echoguard: no identifier")

// DefaultUserLimitConfig is the default UserLimitConfig (Limiter aside).
var DefaultUserLimitConfig = UserLimitConfig{
	Skipper:             neverSkip,
	IdentifierExtractor: clientIP,
	ErrorHandler: func(c echo.Context, err error) error {
		if errors.Is(err, errExtract) {
			return answer(c, http.StatusForbidden, "invalid_request_error", "no_identifier", "the request does not say who sends it")
		}
		c.Response().Header().Set("Retry-After", "1")
		return answer(c, http.StatusServiceUnavailable, "server_error", "backend_unavailable",
			"the rate limit cannot be checked now; try again later")
	},
	DenyHandler: func(c echo.Context, _ string, _ limiter.Decision) error {
		return answer(c, http.StatusTooManyRequests, "rate_limit_error", "rate_limit_exceeded",
			"too many requests for this client: retry after the time in the Retry-After header")
	},
}

// UserLimit returns the per-user REJECT limit of users, per client IP.
func UserLimit(users *limiter.KeyLimiter) echo.MiddlewareFunc {
	cfg := DefaultUserLimitConfig
	cfg.Limiter = users
	return UserLimitWithConfig(cfg)
}

// UserLimitWithConfig returns the per-user REJECT limit configured by cfg,
// its zero fields taken from DefaultUserLimitConfig. It panics without a
// Limiter, as Echo's middleware does on a misconfiguration.
func UserLimitWithConfig(cfg UserLimitConfig) echo.MiddlewareFunc {
	if cfg.Limiter == nil {
		panic("echoguard: UserLimitConfig.Limiter is required")
	}
	if cfg.Skipper == nil {
		cfg.Skipper = DefaultUserLimitConfig.Skipper
	}
	if cfg.IdentifierExtractor == nil {
		cfg.IdentifierExtractor = DefaultUserLimitConfig.IdentifierExtractor
	}
	if cfg.ErrorHandler == nil {
		cfg.ErrorHandler = DefaultUserLimitConfig.ErrorHandler
	}
	if cfg.DenyHandler == nil {
		cfg.DenyHandler = DefaultUserLimitConfig.DenyHandler
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if cfg.Skipper(c) {
				return next(c)
			}
			id, err := cfg.IdentifierExtractor(c)
			if err != nil {
				return cfg.ErrorHandler(c, errors.Join(errExtract, err))
			}
			d, err := cfg.Limiter.Allow(c.Request().Context(), id)
			if err != nil {
				return cfg.ErrorHandler(c, err)
			}
			d.SetHeaders(c.Response().Header())
			if !d.Allowed {
				return cfg.DenyHandler(c, id, d)
			}
			return next(c)
		}
	}
}

// DeadlineConfig configures DeadlineWithConfig.
type DeadlineConfig struct {
	// Skipper skips the deadline for some requests. Default: none skipped.
	Skipper func(c echo.Context) bool
	// Timeout is the SLA of a whole request, the vendor call's retries
	// included. Default 60s, as sluice serve's SLUICE_REQUEST_TIMEOUT.
	Timeout time.Duration
	// ErrorHandler answers a request whose deadline passed before it was
	// answered (the handler's error is passed on). Default: 504
	// request_timeout.
	ErrorHandler func(c echo.Context, err error) error
}

// DefaultDeadlineConfig is the default DeadlineConfig.
var DefaultDeadlineConfig = DeadlineConfig{
	Skipper: neverSkip,
	Timeout: 60 * time.Second,
	ErrorHandler: func(c echo.Context, _ error) error {
		return answer(c, http.StatusGatewayTimeout, "timeout_error", "request_timeout",
			"the request did not complete within its deadline")
	},
}

// Deadline bounds each request by timeout: its context ends then, with the
// cause ErrDeadline, so the guarded call under it stops (and never starts
// an attempt that could not finish), and the request is answered 504.
func Deadline(timeout time.Duration) echo.MiddlewareFunc {
	cfg := DefaultDeadlineConfig
	cfg.Timeout = timeout
	return DeadlineWithConfig(cfg)
}

// DeadlineWithConfig returns the request deadline configured by cfg, its
// zero fields taken from DefaultDeadlineConfig. Unlike Echo's Timeout
// middleware it does not race the handler: the handler sees its context
// end and returns, and only then, unless it already answered, is the
// request answered by ErrorHandler.
func DeadlineWithConfig(cfg DeadlineConfig) echo.MiddlewareFunc {
	if cfg.Skipper == nil {
		cfg.Skipper = DefaultDeadlineConfig.Skipper
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultDeadlineConfig.Timeout
	}
	if cfg.ErrorHandler == nil {
		cfg.ErrorHandler = DefaultDeadlineConfig.ErrorHandler
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if cfg.Skipper(c) {
				return next(c)
			}
			ctx, cancel := context.WithTimeoutCause(c.Request().Context(), cfg.Timeout, ErrDeadline)
			defer cancel()
			c.SetRequest(c.Request().WithContext(ctx))
			err := next(c)
			if errors.Is(context.Cause(ctx), ErrDeadline) && !c.Response().Committed {
				return cfg.ErrorHandler(c, err)
			}
			return err
		}
	}
}

// neverSkip is the default Skipper (Echo's middleware.DefaultSkipper, which
// a Config also accepts).
func neverSkip(echo.Context) bool { return false }

// answer writes an error in the OpenAI shape.
func answer(c echo.Context, status int, typ, code, msg string) error {
	type body struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	}
	return c.JSON(status, map[string]body{"error": {Message: msg, Type: typ, Code: code}})
}
