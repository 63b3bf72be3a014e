package limiter

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/redistest"
)

func TestParseLimit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Limit
		err  string
	}{
		{in: "60/m", want: Limit{Rate: 60, Burst: 1, Period: time.Minute}},
		{in: "10/s", want: Limit{Rate: 10, Burst: 1, Period: time.Second}},
		{in: " 1000 / h ", want: Limit{Rate: 1000, Burst: 1, Period: time.Hour}},
		{in: "5/250ms", want: Limit{Rate: 5, Burst: 1, Period: 250 * time.Millisecond}},
		{in: "2/d", want: Limit{Rate: 2, Burst: 1, Period: 24 * time.Hour}},
		{in: "fast", err: "want RATE/PERIOD"},
		{in: "0/s", err: "positive integer"},
		{in: "-1/s", err: "positive integer"},
		{in: "10/fortnight", err: "unknown period"},
		{in: "10/-1s", err: "unknown period"},
		{in: "2000000/s", err: "finer than one token per microsecond"},
	} {
		got, err := ParseLimit(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseLimit(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseLimit(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestKeyLimiterRejectsAndHashesKeys(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	kl, err := NewKeyLimiter(rdb, budget, Limit{Rate: 2, Burst: 2, Period: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const user = "sk-secret-client-key"
	for i := range 2 {
		d, err := kl.Allow(ctx, user)
		if err != nil || !d.Allowed {
			t.Fatalf("request %d: %+v %v", i, d, err)
		}
	}
	d, err := kl.Allow(ctx, user)
	if err != nil || d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > 30*time.Second {
		t.Fatalf("third request: %+v %v; want rejected with RetryAfter in (0, 30s]", d, err)
	}
	h := http.Header{}
	d.SetHeaders(h)
	if h.Get("Retry-After") == "" || h.Get("RateLimit-Remaining") != "0" || h.Get("RateLimit-Limit") != "2" {
		t.Fatalf("headers %v", h)
	}
	if other, _ := kl.Allow(ctx, "another-key"); !other.Allowed {
		t.Fatal("keys share a limit")
	}
	keys, err := rdb.Keys(ctx, "*"+budget+"*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys %v %v", keys, err)
	}
	for _, k := range keys {
		if strings.Contains(k, user) {
			t.Fatalf("raw client key in Redis key %q", k)
		}
	}
}
