package echoguard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/limiter"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func serve(e *echo.Echo, header ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/summarise", nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

// TestUserLimit: past its burst a user gets 429 with Retry-After and
// RateLimit headers, another user does not; a skipped request is never
// limited.
func TestUserLimit(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	users, err := limiter.NewKeyLimiter(rdb, redistest.Budget(t), limiter.Limit{Rate: 2, Burst: 2, Period: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.Use(UserLimitWithConfig(UserLimitConfig{
		Limiter:             users,
		IdentifierExtractor: func(c echo.Context) (string, error) { return c.Request().Header.Get("X-User"), nil },
		Skipper:             func(c echo.Context) bool { return c.Request().Header.Get("X-Skip") != "" },
	}))
	e.POST("/summarise", func(c echo.Context) error { return c.String(200, "ok") })
	for i := range 2 {
		if rec := serve(e, "X-User", "a"); rec.Code != 200 {
			t.Fatalf("request %d: %d", i+1, rec.Code)
		}
	}
	rec := serve(e, "X-User", "a")
	if rec.Code != 429 || rec.Header().Get("Retry-After") == "" || rec.Header().Get("RateLimit-Limit") != "2" || rec.Header().Get("RateLimit-Remaining") != "0" {
		t.Errorf("third request: %d %v", rec.Code, rec.Header())
	}
	if !strings.Contains(rec.Body.String(), `"code":"rate_limit_exceeded"`) {
		t.Errorf("body %s", rec.Body)
	}
	if rec := serve(e, "X-User", "b"); rec.Code != 200 {
		t.Errorf("another user: %d", rec.Code)
	}
	if rec := serve(e, "X-User", "a", "X-Skip", "1"); rec.Code != 200 {
		t.Errorf("skipped: %d", rec.Code)
	}
}

// TestUserLimitDefaultIdentityIsThePeer: by default a client is its direct
// peer address; an X-Forwarded-For it writes itself does not give it a new
// identity (and a new limit) per request. An app that sets an IPExtractor
// (its trusted proxies) gets what that extractor reads.
func TestUserLimitDefaultIdentityIsThePeer(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	users, err := limiter.NewKeyLimiter(rdb, redistest.Budget(t), limiter.Limit{Rate: 1, Burst: 1, Period: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.Use(UserLimit(users))
	e.POST("/summarise", func(c echo.Context) error { return c.String(200, "ok") })
	if rec := serve(e, "X-Forwarded-For", "203.0.113.1"); rec.Code != 200 {
		t.Fatalf("first request: %d", rec.Code)
	}
	for i, xff := range []string{"203.0.113.2", "198.51.100.7, 203.0.113.3", ""} {
		if rec := serve(e, "X-Forwarded-For", xff); rec.Code != 429 {
			t.Errorf("request %d with X-Forwarded-For %q from the same peer: %d, want 429", i+2, xff, rec.Code)
		}
	}
	// An app's own extractor (here: one that trusts the header) decides.
	e.IPExtractor = func(r *http.Request) string { return r.Header.Get("X-Forwarded-For") }
	if rec := serve(e, "X-Forwarded-For", "203.0.113.9"); rec.Code != 200 {
		t.Errorf("an app that trusts its proxies: %d, want the forwarded client's own limit", rec.Code)
	}
}

// TestUserLimitRedisDown: the limit fails closed.
func TestUserLimitRedisDown(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	users, err := limiter.NewKeyLimiter(rdb, redistest.Budget(t), limiter.Limit{Rate: 2, Burst: 2, Period: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_ = rdb.Close()
	e := echo.New()
	e.Use(UserLimit(users))
	e.POST("/summarise", func(c echo.Context) error { return c.String(200, "ok") })
	if rec := serve(e); rec.Code != 503 {
		t.Errorf("%d, want 503", rec.Code)
	}
}

// TestDeadline: a handler still working at the deadline sees its context
// end with ErrDeadline and the request is answered 504; one that answers in
// time is untouched.
func TestDeadline(t *testing.T) {
	e := echo.New()
	e.Use(Deadline(50 * time.Millisecond))
	e.POST("/summarise", func(c echo.Context) error {
		if c.Request().Header.Get("X-Fast") != "" {
			return c.String(200, "ok")
		}
		<-c.Request().Context().Done()
		if context.Cause(c.Request().Context()) != ErrDeadline {
			t.Errorf("cause %v", context.Cause(c.Request().Context()))
		}
		return c.Request().Context().Err()
	})
	if rec := serve(e); rec.Code != 504 || !strings.Contains(rec.Body.String(), "request_timeout") {
		t.Errorf("%d %s, want 504", rec.Code, rec.Body)
	}
	if rec := serve(e, "X-Fast", "1"); rec.Code != 200 {
		t.Errorf("%d, want 200", rec.Code)
	}
}
