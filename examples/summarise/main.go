// Command summarise is a tiny Echo API that calls an LLM vendor from its own
// handler, through the official openai-go SDK, with sluice's whole stack in
// process: the per-user limit and the request deadline as Echo middleware
// (package guard/echoguard), and the vendor call guarded by a guard.Transport
// (package guard), whose budget every replica shares through Redis.
//
//	POST /summarise {"text": "..."}  ->  {"summary": "..."}
//
// Run as many replicas as you like against one Redis:
//
//	REDIS_URL=redis://localhost:6379 VENDOR_URL=http://localhost:9090/v1 VENDOR_API_KEY=... \
//	LISTEN=:8081 go run ./examples/summarise
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/guard"
	"github.com/sluicehq/sluice/guard/echoguard"
	"github.com/sluicehq/sluice/limiter"
)

// config is what an app needs to know: where its vendor and Redis are, and
// the budget it shares with its other replicas.
type config struct {
	VendorURL string // the vendor's base URL, with /v1
	VendorKey string
	Budget    string
	Model     string
	Guard     guard.Options
	UserRate  limiter.Limit // zero: no per-user limit
	SLA       time.Duration
}

// app is one replica: its Echo server, its guard Transport and the SDK
// client on it.
type app struct {
	cfg    config
	echo   *echo.Echo
	guard  *guard.Transport
	vendor openai.Client
}

// newApp builds a replica on rdb. Close it to release its leases.
func newApp(rdb redis.UniversalClient, cfg config) (*app, error) {
	t, err := guard.New(rdb, cfg.Budget, cfg.Guard)
	if err != nil {
		return nil, err
	}
	a := &app{cfg: cfg, guard: t, echo: echo.New()}
	// The SDK's own retries are off: guard retries, outside the slot, by
	// rules that know the queue and call deadlines.
	a.vendor = openai.NewClient(option.WithBaseURL(cfg.VendorURL), option.WithAPIKey(cfg.VendorKey),
		option.WithHTTPClient(&http.Client{Transport: t}), option.WithMaxRetries(0))
	a.echo.HideBanner, a.echo.HidePort = true, true
	if !cfg.UserRate.IsZero() {
		users, err := limiter.NewKeyLimiter(rdb, cfg.Budget, cfg.UserRate)
		if err != nil {
			return nil, errors.Join(err, t.Close())
		}
		a.echo.Use(echoguard.UserLimit(users))
	}
	a.echo.Use(echoguard.Deadline(cfg.SLA))
	a.echo.POST("/summarise", a.summarise)
	return a, nil
}

// Close releases the replica's leases.
func (a *app) Close() error { return a.guard.Close() }

type summariseRequest struct {
	Text string `json:"text"`
}

type summariseResponse struct {
	Summary string `json:"summary"`
}

// summarise asks the vendor for a one-sentence summary of the text.
func (a *app) summarise(c echo.Context) error {
	var in summariseRequest
	if err := c.Bind(&in); err != nil || in.Text == "" {
		return answer(c, http.StatusBadRequest, "invalid_request_error", "invalid_text", `send {"text": "..."}`)
	}
	ctx := c.Request().Context()
	completion, err := a.vendor.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: a.cfg.Model,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("Summarise the user's text in one sentence."),
			openai.UserMessage(in.Text),
		},
	})
	if err != nil {
		return a.failed(c, err)
	}
	if len(completion.Choices) == 0 {
		return answer(c, http.StatusBadGateway, "upstream_error", "upstream_failed", "the vendor returned no summary")
	}
	return c.JSON(http.StatusOK, summariseResponse{Summary: completion.Choices[0].Message.Content})
}

// failed turns the guarded call's errors into this app's answers.
func (a *app) failed(c echo.Context, err error) error {
	var vendor *openai.Error
	switch {
	case c.Request().Context().Err() != nil:
		return err // the deadline middleware answers 504; a client gone gets nothing
	case errors.Is(err, guard.ErrQueueTimeout):
		c.Response().Header().Set("Retry-After", "1")
		return answer(c, http.StatusServiceUnavailable, "server_error", "queue_timeout", "the vendor budget is saturated; retry later")
	case errors.Is(err, guard.ErrUnavailable):
		c.Response().Header().Set("Retry-After", "1")
		return answer(c, http.StatusServiceUnavailable, "server_error", "backend_unavailable", "the budget cannot be checked now; retry later")
	case errors.As(err, &vendor) && vendor.StatusCode == http.StatusTooManyRequests:
		// guard retried it already; the vendor's own Retry-After is passed on.
		if ra := vendor.Response.Header.Get("Retry-After"); ra != "" {
			c.Response().Header().Set("Retry-After", ra)
		}
		return answer(c, http.StatusTooManyRequests, "rate_limit_error", "vendor_rate_limited", "the vendor is rate limiting; retry later")
	}
	return answer(c, http.StatusBadGateway, "upstream_error", "upstream_failed", "the vendor failed to summarise the text")
}

// answer writes an error in the OpenAI shape.
func answer(c echo.Context, status int, typ, code, msg string) error {
	type body struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	}
	return c.JSON(status, map[string]body{"error": {Message: msg, Type: typ, Code: code}})
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("summarise", "error", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	opt, err := redis.ParseURL(os.Getenv("REDIS_URL"))
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	a, err := newApp(rdb, config{
		VendorURL: os.Getenv("VENDOR_URL"), VendorKey: os.Getenv("VENDOR_API_KEY"),
		Budget: "summarise", Model: "gpt-4o-mini", SLA: 60 * time.Second,
		Guard:    guard.Options{Rate: limiter.PerMinute(60), Concurrency: 3},
		UserRate: limiter.PerMinute(20),
	})
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: os.Getenv("LISTEN"), Handler: a.echo, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("summarise listening", "addr", srv.Addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
