package limiter

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"

	"github.com/sluicehq/sluice/internal/redisstate"
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
		{in: "1/1500ns", err: "whole number of microseconds"},
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

// PerSecond, PerMinute and PerHour build the limits redis_rate's functions of
// the same names build, and a Limit converts to redis_rate.Limit as is.
func TestLimitsAgreeWithRedisRate(t *testing.T) {
	for _, tc := range []struct{ ours, theirs redis_rate.Limit }{
		{redis_rate.Limit(PerSecond(10)), redis_rate.PerSecond(10)},
		{redis_rate.Limit(PerMinute(60)), redis_rate.PerMinute(60)},
		{redis_rate.Limit(PerHour(1000)), redis_rate.PerHour(1000)},
	} {
		if tc.ours != tc.theirs {
			t.Errorf("got %+v, redis_rate has %+v", tc.ours, tc.theirs)
		}
	}
}

// One rounding of the interval, up to a whole microsecond, everywhere: the
// Limit's Interval is what the scripts are given.
func TestIntervalRoundsUpOnce(t *testing.T) {
	for _, tc := range []struct {
		l    Limit
		want time.Duration
	}{
		{Limit{Rate: 10, Burst: 1, Period: time.Second}, 100 * time.Millisecond},
		{Limit{Rate: 3, Burst: 1, Period: time.Second}, 333334 * time.Microsecond},
		{Limit{Rate: 7, Burst: 1, Period: time.Minute}, 8571429 * time.Microsecond},
		{Limit{Rate: 1000000, Burst: 1, Period: time.Second}, time.Microsecond},
		{Limit{Rate: 999999, Burst: 1, Period: time.Second}, 2 * time.Microsecond},
		{Limit{Rate: 3, Burst: 1, Period: 24 * time.Hour}, 8 * time.Hour},
	} {
		if err := tc.l.Validate(); err != nil {
			t.Fatal(err)
		}
		got := tc.l.Interval()
		if got != tc.want || got.Microseconds() != redisstate.IntervalMicros(tc.l.Rate, tc.l.Period) {
			t.Errorf("%v: Interval %s, scripts' %dµs; want %s for both", tc.l, got, redisstate.IntervalMicros(tc.l.Rate, tc.l.Period), tc.want)
		}
		if time.Duration(tc.l.Rate)*got < tc.l.Period {
			t.Errorf("%v: Interval %s refills faster than the rate", tc.l, got)
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
