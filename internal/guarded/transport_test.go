package guarded

import (
	"net/http"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	s := &Transport{cfg: Config{BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second}}
	for attempt, ceiling := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 5: time.Second, 60: time.Second} {
		var most time.Duration
		for range 200 {
			d := s.backoff(attempt, 0)
			if d < 0 || d > ceiling {
				t.Fatalf("attempt %d: %s outside [0, %s]", attempt, d, ceiling)
			}
			most = max(most, d)
		}
		if most < ceiling/2 {
			t.Errorf("attempt %d: never above %s: not full jitter up to %s", attempt, most, ceiling)
		}
	}
	if d := s.backoff(1, 3*time.Second); d != 3*time.Second {
		t.Errorf("vendor wait ignored: %s", d)
	}
}

func TestRetryAfter(t *testing.T) {
	for _, c := range []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{}, 0},
		{http.Header{"Retry-After": {"3"}}, 3 * time.Second},
		{http.Header{"Retry-After": {"-1"}}, 0},
		{http.Header{"Retry-After": {"junk"}}, 0},
		{http.Header{"Retry-After": {"NaN"}}, 0},
		{http.Header{"Retry-After": {"1e300"}}, 24 * time.Hour},
		{http.Header{"Retry-After-Ms": {"250"}, "Retry-After": {"9"}}, 250 * time.Millisecond},
		{http.Header{"Retry-After": {"Mon, 02 Jan 2006 15:04:05 GMT"}}, 0},
	} {
		if got := RetryAfter(c.h); got != c.want {
			t.Errorf("%v: %s, want %s", c.h, got, c.want)
		}
	}
}
