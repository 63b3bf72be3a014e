package guard_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/guard"
	"github.com/sluicehq/sluice/limiter"
)

// An openai-go client whose calls share one budget with every replica:
// admitted cluster-wide, retried by guard (the SDK's own retries off).
// (The example runs on an in-process Redis and a fake vendor; use yours.)
func Example_openai() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	vendor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"1","object":"chat.completion","model":"gpt-4o-mini",`+
			`"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hello"}}]}`)
	}))
	defer vendor.Close()

	t, err := guard.New(rdb, "openai", guard.Options{Rate: limiter.Limit{Rate: 10, Burst: 2, Period: time.Second}, Concurrency: 3,
		QueueTimeout: 5 * time.Second, CallTimeout: 30 * time.Second, MaxAttempts: 3})
	if err != nil {
		panic(err)
	}
	defer t.Close()
	client := openai.NewClient(option.WithBaseURL(vendor.URL+"/v1"), option.WithAPIKey("sk-..."),
		option.WithHTTPClient(&http.Client{Transport: t}), option.WithMaxRetries(0))

	c, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	switch {
	case errors.Is(err, guard.ErrQueueTimeout):
		fmt.Println("budget saturated: answer 503")
	case errors.Is(err, guard.ErrUnavailable):
		fmt.Println("Redis down: answer 503")
	case err != nil:
		fmt.Println("vendor failed:", err)
	default:
		fmt.Println(c.Choices[0].Message.Content)
	}
	// Output: hello
}

// A vendor that fails twice with 503 is called three times; the caller
// sees only the answer of the third attempt.
func ExampleTransport_retries() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	var calls atomic.Int64
	vendor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer vendor.Close()

	t, err := guard.New(rdb, "vendor", guard.Options{Rate: limiter.PerSecond(100), MaxAttempts: 3, BackoffBase: time.Millisecond})
	if err != nil {
		panic(err)
	}
	defer t.Close()
	resp, err := (&http.Client{Transport: t}).Get(vendor.URL)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body), "after", calls.Load(), "calls")
	// Output: 200 ok after 3 calls
}
