package containertest

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/load"
	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/redistest"
)

// Windows are the window lengths W at which I2 is checked.
var Windows = []time.Duration{250 * time.Millisecond, time.Second, 3 * time.Second}

// CheckBudget checks I1 and I2 on what the vendor saw since its last reset:
// never more than C in flight, never more than B + R*W arrivals in any
// window W of Windows. It returns the report of W = 1s.
func (s *Stack) CheckBudget(t testing.TB) *mockvendor.Report {
	t.Helper()
	var one *mockvendor.Report
	for _, w := range Windows {
		rep, err := s.VendorStats.StatsWindow(t.Context(), w)
		if err != nil {
			t.Fatal(err)
		}
		if w == time.Second {
			one = rep
		}
		bound := float64(s.Burst) + float64(s.Rate)*w.Seconds()
		if float64(rep.MaxInWindow) > bound {
			t.Errorf("I2: the vendor saw %d arrivals within %s, more than B + R*W = %d + %d/s * %s = %g",
				rep.MaxInWindow, w, s.Burst, s.Rate, w, bound)
		}
		if rep.Dropped > 0 {
			t.Errorf("vendor dropped %d records: I2 is not fully checked", rep.Dropped)
		}
	}
	if one.MaxInFlight > s.Concurrency {
		t.Errorf("I1: the vendor saw %d calls in flight, more than C = %d", one.MaxInFlight, s.Concurrency)
	}
	t.Logf("vendor: %d arrivals in %.1fs, max in flight %d (C=%d), max %d in 1s (B+R*1s=%d), by status %v, mean 2xx latency %.0fms",
		one.Arrivals, one.ElapsedSeconds, one.MaxInFlight, s.Concurrency, one.MaxInWindow, s.Burst+s.Rate, one.ByStatus, one.MeanOKLatencyMS)
	return one
}

// Throughput measures the vendor's arrivals per second over the next d,
// without resetting its statistics (load keeps running).
func (s *Stack) Throughput(ctx context.Context, d time.Duration) (float64, error) {
	a, err := s.VendorStats.StatsWindow(ctx, time.Second)
	if err != nil {
		return 0, err
	}
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	b, err := s.VendorStats.StatsWindow(ctx, time.Second)
	if err != nil {
		return 0, err
	}
	return float64(b.Arrivals-a.Arrivals) / (b.ElapsedSeconds - a.ElapsedSeconds), nil
}

// CheckUtilisation checks I5: over the next d, with demand above the
// budget, the vendor receives at least 90% of min(R, C/latency), latency
// being the vendor's configured mean.
func (s *Stack) CheckUtilisation(t testing.TB, d time.Duration) {
	t.Helper()
	rate, err := s.Throughput(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	lat := s.Latency()
	limit := s.Limit(lat)
	t.Logf("I5: vendor received %.1f/s over %s; budget min(R, C/latency) = min(%d, %d/%s) = %.1f/s: %.0f%%",
		rate, d, s.Rate, s.Concurrency, lat, limit, 100*rate/limit)
	if rate < 0.9*limit {
		t.Errorf("I5: the vendor received %.1f/s, less than 90%% of the budget's %.1f/s", rate, limit)
	}
}

// Verdict judges one record: "" if its answer is acceptable, else why not.
type Verdict func(load.Record) string

// StoreDown accepts, besides load.Normal answers, the 503 backend_unavailable
// of a gateway that cannot reach Redis.
func StoreDown(r load.Record) string {
	if r.Err == "" && r.Status == 503 && r.Code == "backend_unavailable" {
		return ""
	}
	return load.Normal(r)
}

// CheckAnswers checks I4 on recs: each got one answer that judge accepts.
// It reports up to ten offenders and returns how many there were.
func CheckAnswers(t testing.TB, recs []load.Record, judge Verdict) int {
	t.Helper()
	bad := 0
	for _, r := range recs {
		if why := judge(r); why != "" {
			if bad < 10 {
				t.Errorf("I4: %s: %s", r, why)
			}
			bad++
		}
	}
	if bad > 10 {
		t.Errorf("I4: ... %d bad answers in all", bad)
	}
	return bad
}

// CheckExactlyOnce checks, on an error-free vendor whose statistics were
// reset before the load and read after it, that each 200 the clients got
// came from a vendor call. Strict (no fault that can cost an attempt):
// vendor calls == answers 200, so no request was retried or duplicated.
// Otherwise (I6): no more calls than the retry policy allows, MaxAttempts
// per request.
func (s *Stack) CheckExactlyOnce(t testing.TB, recs []load.Record, v *mockvendor.Report, strict bool) {
	t.Helper()
	ok := load.Count(recs, func(r load.Record) bool { return r.Status == 200 && r.Err == "" })
	if v.InFlight != 0 {
		t.Errorf("vendor still has %d calls in flight after the load", v.InFlight)
	}
	if int(v.ByStatus[200]) < ok {
		t.Errorf("I4: clients got %d answers 200 but the vendor answered only %d", ok, v.ByStatus[200])
	}
	switch {
	case strict && int(v.Arrivals) != ok:
		t.Errorf("I4/I6: the vendor received %d calls for %d answers 200 (want one call per answer; by status %v)",
			v.Arrivals, ok, v.ByStatus)
	case int(v.Arrivals) > s.MaxAttempts*len(recs):
		t.Errorf("I6: the vendor received %d calls for %d requests: more than %d attempts each", v.Arrivals, len(recs), s.MaxAttempts)
	case int(v.Arrivals) != ok:
		t.Logf("I6: the vendor received %d calls for %d requests and %d answers 200 (by status %v)", v.Arrivals, len(recs), ok, v.ByStatus)
	}
}

// LeaseIDs returns the lease ids in Redis now.
func (s *Stack) LeaseIDs(ctx context.Context) ([]string, error) {
	return s.RedisClient().ZRange(ctx, Keys.Leases, 0, -1).Result()
}

// CheckDrained checks I3 once the load is over: within d, no lease, no
// queued caller and no waiter is left in Redis; and every key has a TTL.
func (s *Stack) CheckDrained(t testing.TB, d time.Duration) {
	t.Helper()
	ctx := t.Context()
	rdb := s.RedisClient()
	var left map[string]int64
	took, err := Within(ctx, d, func() bool {
		left = map[string]int64{}
		for part, key := range map[string]string{"leases": Keys.Leases, "queue": Keys.Queue} {
			if n, err := rdb.ZCard(ctx, key).Result(); err != nil || n > 0 {
				left[part] = n
			}
		}
		return len(left) == 0
	})
	if err != nil {
		t.Errorf("I3: after the load, Redis still holds %v (ZCARD) %s after it ended", left, d)
	} else {
		t.Logf("I3: no lease or queued caller left %s after the load", took.Round(time.Millisecond))
	}
	keys, err := redistest.KeysWithoutTTL(ctx, rdb, "*")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		t.Errorf("I3: keys without a TTL: %q", keys)
	}
}
