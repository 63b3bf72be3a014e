package containertest_test

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/containertest"
	"github.com/sluicehq/sluice/internal/load"
)

// waiterTTL is semaphore.Options.WaiterTTL as sluice serve sets it (the
// default): a dead replica's queued callers leave the queue within it.
const waiterTTL = 2 * time.Second

// urls returns the gateways' base URLs.
func urls(s *containertest.Stack) []string {
	var u []string
	for _, g := range s.Gateways {
		u = append(u, g.URL)
	}
	return u
}

// waitArrivals waits until the vendor has received n calls since its last
// reset: the load has started and, for n > B, spent the burst.
func waitArrivals(t *testing.T, s *containertest.Stack, n int64, within time.Duration) {
	t.Helper()
	if _, err := containertest.Within(t.Context(), within, func() bool {
		rep, err := s.VendorStats.StatsWindow(t.Context(), time.Second)
		return err == nil && rep.Arrivals >= n
	}); err != nil {
		t.Fatalf("the vendor did not receive %d calls: %v", n, err)
	}
}

// Case 1: steady load above the budget, through sluice load's package.
// I1, I2 at the vendor, I4 at the clients, I5 over the steady part, and
// one vendor call per answer.
func TestSteadyLoadAboveBudget(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  containertest.Options
	}{
		// min(R, C/latency) = min(20, 3/100ms = 30) = 20/s: the rate binds.
		{"rate-bound", containertest.Options{Rate: 20, Burst: 4, Concurrency: 3, VendorLatency: "100ms"}},
		// min(50, 3/200ms = 15) = 15/s: the concurrency binds.
		{"concurrency-bound", containertest.Options{Rate: 50, Burst: 4, Concurrency: 3, VendorLatency: "200ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := containertest.Start(t, tc.opt)
			type result struct {
				rep *load.Report
				err error
			}
			done := make(chan result, 1)
			go func() {
				rep, err := load.Run(context.Background(), load.Config{
					URLs:     urls(s),
					Clients:  16, // about twice what the budget serves at once, queued
					Duration: 8 * time.Second,
					Key:      containertest.ClientKey,
					Timeout:  30 * time.Second,
					Vendor: &load.VendorCheck{
						StatsURL:    s.Vendor.URL + "/stats",
						Concurrency: s.Concurrency,
						Rate:        s.Rate,
						Burst:       s.Burst,
						Window:      time.Second,
					},
				})
				done <- result{rep, err}
			}()
			waitArrivals(t, s, int64(s.Burst+s.Rate), 5*time.Second)
			s.CheckUtilisation(t, 4*time.Second)
			res := <-done
			if res.err != nil {
				t.Fatal(res.err)
			}
			rep := res.rep
			t.Logf("sluice load: %d requests, statuses %v, transport errors %d, latency p50 %v p99 %v",
				rep.Requests, rep.Statuses, rep.TransportErrors, rep.Latency.P50, rep.Latency.P99)
			checkLoadReport(t, rep)
			v := s.CheckBudget(t)
			if ok := rep.Statuses[200]; int64(ok) != v.Arrivals || v.ByStatus[200] != int64(ok) {
				t.Errorf("I4/I6: %d answers 200, but the vendor received %d calls (by status %v): want one call per answer",
					ok, v.Arrivals, v.ByStatus)
			}
			s.CheckDrained(t, time.Second)
		})
	}
}

// arrivals returns how many calls the vendor received since its last reset.
func arrivals(t *testing.T, s *containertest.Stack) int64 {
	t.Helper()
	rep, err := s.VendorStats.StatsWindow(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return rep.Arrivals
}

// serve waits until the vendor has received n more calls: the system is
// serving.
func serve(t *testing.T, s *containertest.Stack, n int64, within time.Duration) {
	t.Helper()
	waitArrivals(t, s, arrivals(t, s)+n, within)
}

// pinned is a set of slow requests holding slots of one gateway.
type pinned struct {
	ids  []string         // their lease ids
	done chan load.Record // their records, as they end
}

// pin sends k requests to n that the vendor answers after latency, on an
// otherwise idle system, and returns once their k leases are in Redis: the
// gateway surely holds those slots.
func pin(t *testing.T, s *containertest.Stack, n *containertest.Node, k int, latency time.Duration) *pinned {
	t.Helper()
	before, err := s.LeaseIDs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p := &pinned{done: make(chan load.Record, k)}
	h := http.Header{"X-Mock-Latency": {latency.String()}}
	for range k {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p.done <- s.Send(ctx, n, h)
		}()
	}
	if _, err := containertest.Within(t.Context(), 5*time.Second, func() bool {
		ids, err := s.LeaseIDs(t.Context())
		p.ids = slices.DeleteFunc(ids, func(id string) bool { return err != nil || slices.Contains(before, id) })
		return len(p.ids) == k
	}); err != nil {
		t.Fatalf("%d slow requests to %s: leases %v: %v", k, n.Name, p.ids, err)
	}
	return p
}

// records waits for the k records of p.
func (p *pinned) records(t *testing.T, k int) []load.Record {
	t.Helper()
	var recs []load.Record
	for range k {
		select {
		case r := <-p.done:
			recs = append(recs, r)
		case <-time.After(45 * time.Second):
			t.Fatal("pinned requests did not end")
		}
	}
	return recs
}

// held returns which of ids are still leases in Redis.
func held(t *testing.T, s *containertest.Stack, ids []string) []string {
	now, err := s.LeaseIDs(t.Context())
	if err != nil {
		return ids // Redis unreachable: assume still held
	}
	return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return !slices.Contains(now, id) })
}

// Case 2: a replica SIGKILLed under load. Its slots come back within the
// lease TTL, the other replicas keep serving, and the budget holds.
func TestReplicaKilled(t *testing.T) {
	s := containertest.Start(t, containertest.Options{LeaseTTL: 2 * time.Second, CallTimeout: 10 * time.Second})
	ctx := t.Context()
	gw3 := s.Gateways[2]
	if err := s.VendorStats.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	// Two of the three slots held by gw3 for far longer than the TTL: the
	// replica surely dies holding them.
	p := pin(t, s, gw3, 2, 8*time.Second)
	l := s.StartLoad(12)
	serve(t, s, 10, 5*time.Second)

	// As a load balancer would, stop sending to gw3, then kill it with
	// the requests it has.
	l.Disable(gw3.Name)
	killAt := time.Now()
	if err := s.Signal(ctx, gw3, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	back, err := containertest.Within(ctx, s.LeaseTTL+500*time.Millisecond, func() bool { return len(held(t, s, p.ids)) == 0 })
	if err != nil {
		t.Errorf("I3: the killed replica's leases %v were still held %s after SIGKILL (lease TTL %s)", held(t, s, p.ids), back, s.LeaseTTL)
	} else {
		t.Logf("I3: the killed replica's 2 leases came back %s after SIGKILL (lease TTL %s)", back.Round(time.Millisecond), s.LeaseTTL)
	}
	// The others keep serving. Their longest pause between two answers 200
	// is bounded by the TTLs: one free slot serves them, but the dead
	// replica's waiters, at the head of the shared FIFO queue, hold the
	// line until their own TTL passes (the semaphore's WaiterTTL, 2s by
	// default, which sluice serve keeps).
	serve(t, s, int64(s.Rate), 5*time.Second) // a second of service on every slot
	others200 := func(r load.Record) bool { return r.Target != gw3.Name && r.Status == 200 }
	gap := longestGap(l.Records(), killAt, time.Now(), others200)
	bound := max(s.LeaseTTL, waiterTTL) + s.Latency() + 500*time.Millisecond
	t.Logf("the other replicas' longest pause between answers 200 after the kill: %s (bound %s)", gap.Round(time.Millisecond), bound)
	if gap > bound {
		t.Errorf("the other replicas answered no 200 for %s after the kill (lease TTL %s, waiter TTL %s)", gap.Round(time.Millisecond), s.LeaseTTL, waiterTTL)
	}
	s.CheckUtilisation(t, 3*time.Second)
	recs := l.Stop()
	pins := p.records(t, 2)
	t.Log(load.Summary(append(recs, pins...)))
	if t.Failed() {
		t.Logf("answers 200 of gw1 and gw2 after the kill, at: %v", timeline(recs, killAt, others200))
	}
	for _, r := range pins {
		if r.Status != 0 {
			t.Errorf("pinned request on the killed replica: %s; want no answer", r)
		}
	}
	// The killed replica's clients lose their requests; the others' get
	// well-formed answers.
	var others []load.Record
	for _, r := range recs {
		if r.Target != gw3.Name {
			others = append(others, r)
		} else if r.Start.After(killAt) {
			t.Errorf("a request was sent to gw3 after it was disabled: %s", r)
		}
	}
	containertest.CheckAnswers(t, others, load.Normal)
	v := s.CheckBudget(t)
	s.CheckExactlyOnce(t, append(recs, pins...), v, false)
	s.CheckDrained(t, time.Second)
}

// timeline lists, as offsets from t0, the ends of the records that match
// and end within 3s of t0.
func timeline(recs []load.Record, t0 time.Time, match func(load.Record) bool) []string {
	var out []string
	for _, end := range ends(recs, t0, t0.Add(3*time.Second), match) {
		out = append(out, end.Sub(t0).Round(10*time.Millisecond).String())
	}
	return out
}

// longestGap returns the longest time within [t0, t1] without the end of a
// record that matches.
func longestGap(recs []load.Record, t0, t1 time.Time, match func(load.Record) bool) time.Duration {
	gap, last := time.Duration(0), t0
	for _, end := range append(ends(recs, t0, t1, match), t1) {
		gap = max(gap, end.Sub(last))
		last = end
	}
	return gap
}

// ends returns the sorted ends within [t0, t1] of the records that match.
func ends(recs []load.Record, t0, t1 time.Time, match func(load.Record) bool) []time.Time {
	var ends []time.Time
	for _, r := range recs {
		if match(r) && !r.End.Before(t0) && !r.End.After(t1) {
			ends = append(ends, r.End)
		}
	}
	slices.SortFunc(ends, time.Time.Compare)
	return ends
}

// goroutines returns go_goroutines of each gateway.
func goroutines(t *testing.T, s *containertest.Stack) []float64 {
	t.Helper()
	var n []float64
	for _, g := range s.Gateways {
		v, err := s.Metric(t.Context(), g, "go_goroutines")
		if err != nil {
			t.Fatal(err)
		}
		n = append(n, v)
	}
	return n
}

// Case 3: Redis paused for longer than the queue timeout. Requests fail
// fast (503 within the queue timeout), readiness goes red, nothing piles
// up; after unpause, service resumes by itself and the budget holds.
func TestRedisPaused(t *testing.T) {
	s := containertest.Start(t, containertest.Options{QueueTimeout: time.Second, LeaseTTL: 2 * time.Second})
	ctx := t.Context()
	const pause = 3 * time.Second
	if err := s.VendorStats.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	const clients = 12
	l := s.StartLoad(clients)
	serve(t, s, int64(s.Burst+s.Rate), 5*time.Second)
	base := goroutines(t, s)
	if err := s.Pause(ctx, s.Redis); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	red, err := s.WaitReady(ctx, false, 3*time.Second, s.Gateways...)
	if err != nil {
		t.Error(err)
	}
	t.Logf("readiness red on every replica %s after the pause", red.Round(time.Millisecond))
	time.Sleep(time.Until(pausedAt.Add(pause))) // the outage itself, not a synchronisation
	during := goroutines(t, s)
	unpauseAt := time.Now()
	if err := s.Unpause(ctx, s.Redis); err != nil {
		t.Fatal(err)
	}
	green, err := s.WaitReady(ctx, true, 5*time.Second, s.Gateways...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("readiness green on every replica %s after the unpause", green.Round(time.Millisecond))
	serve(t, s, int64(s.Rate), 5*time.Second)
	s.CheckUtilisation(t, 3*time.Second)
	recs := l.Stop()
	after := goroutines(t, s)
	t.Log(load.Summary(recs))
	t.Logf("goroutines per replica: before %v, end of the pause %v, after %v", base, during, after)
	for i := range base {
		if during[i] > base[i]+4*clients || after[i] > base[i]+10 {
			t.Errorf("%s: goroutines pile up: before %v, end of the pause %v, after %v", s.Gateways[i].Name, base[i], during[i], after[i])
		}
	}

	containertest.CheckAnswers(t, recs, containertest.StoreDown)
	// Fail fast: every 503 comes within the queue timeout (plus 250ms for
	// the answer's way); a request that starts during the pause, early
	// enough that its queue deadline passes before the unpause, gets one.
	// Nothing hangs: no request outlives queue timeout + call timeout.
	slack := 250 * time.Millisecond
	inPause, late, slowest := 0, 0, time.Duration(0)
	for _, r := range recs {
		slowest = max(slowest, r.Latency())
		if r.Status == 503 && r.Latency() > s.QueueTimeout+slack {
			if late < 5 {
				t.Errorf("503 later than the queue timeout %s: %s", s.QueueTimeout, r)
			}
			late++
		}
		if r.Start.After(pausedAt) && r.Start.Add(s.QueueTimeout+slack).Before(unpauseAt) {
			inPause++
			if r.Status != 503 || r.Latency() > s.QueueTimeout+slack {
				t.Errorf("a request during the pause got %s; want a 503 within %s", r, s.QueueTimeout+slack)
			}
		}
		if r.Latency() > s.QueueTimeout+s.CallTimeout {
			t.Errorf("a request hung: %s", r)
		}
	}
	if late > 0 {
		t.Errorf("%d answers 503 came later than the queue timeout %s (+%s)", late, s.QueueTimeout, slack)
	}
	if inPause == 0 {
		t.Error("no request started during the pause early enough to judge")
	}
	t.Logf("%d requests started during the pause; slowest request of the run %s", inPause, slowest.Round(time.Millisecond))
	v := s.CheckBudget(t)
	s.CheckExactlyOnce(t, recs, v, false)
	s.CheckDrained(t, s.LeaseTTL+time.Second)
}

// Case 4: Redis restarted (its state lost) and SCRIPT FLUSH, under load.
// No over-grant afterwards (I1, I2 at the vendor over the whole run and
// after the restart), no 500s, and no replica restarts: they recover by
// themselves.
func TestRedisRestartAndScriptFlush(t *testing.T) {
	// R = 15/s and C/latency = 3/200ms = 15/s: both limits bind, so an
	// over-grant of tokens or of slots would both show at the vendor.
	s := containertest.Start(t, containertest.Options{Rate: 15, Burst: 4, Concurrency: 3, VendorLatency: "200ms", LeaseTTL: 2 * time.Second})
	ctx := t.Context()
	started := map[string]*containertest.ContainerState{}
	for _, g := range s.Gateways {
		st, err := s.State(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		started[g.Name] = st
	}
	if err := s.VendorStats.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	l := s.StartLoad(14)
	serve(t, s, int64(s.Burst+s.Rate), 5*time.Second)

	// SCRIPT FLUSH: the next EVALSHA gets NOSCRIPT and the scripts are
	// loaded again, with no error.
	flushAt := time.Now()
	if err := s.RedisClient().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	serve(t, s, int64(s.Rate), 5*time.Second)
	flushedUntil := time.Now()

	restartAt := time.Now()
	if err := s.RestartRedis(ctx); err != nil {
		t.Fatal(err)
	}
	upAt := time.Now()
	green, err := s.WaitReady(ctx, true, 5*time.Second, s.Gateways...)
	if err != nil {
		t.Fatal(err)
	}
	readyAt := time.Now()
	t.Logf("Redis down and up again in %s; every replica ready %s later", upAt.Sub(restartAt).Round(time.Millisecond), green.Round(time.Millisecond))
	serve(t, s, int64(s.Rate), 5*time.Second)
	if err := s.RedisClient().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	s.CheckUtilisation(t, 3*time.Second)
	recs := l.Stop()
	t.Log(load.Summary(recs))

	// Redis unreachable answers (503 backend_unavailable) only while it was
	// down; around the flushes, only normal answers.
	outage := func(r load.Record) bool {
		return r.End.After(restartAt) && r.Start.Before(readyAt.Add(s.QueueTimeout))
	}
	containertest.CheckAnswers(t, recs, func(r load.Record) string {
		if outage(r) {
			return containertest.StoreDown(r)
		}
		return load.Normal(r)
	})
	flushErrs := load.Count(recs, func(r load.Record) bool {
		return r.Start.After(flushAt) && r.Start.Before(flushedUntil) && r.Status != 200 && r.Code != "queue_timeout"
	})
	if flushErrs > 0 {
		t.Errorf("%d requests failed after SCRIPT FLUSH", flushErrs)
	}
	v := s.CheckBudget(t)
	s.CheckExactlyOnce(t, recs, v, false)
	for _, g := range s.Gateways {
		st, err := s.State(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Running || st.RestartCount != 0 || st.StartedAt != started[g.Name].StartedAt {
			t.Errorf("%s restarted: before %+v, after %+v", g.Name, started[g.Name], st)
		}
	}
	s.CheckDrained(t, time.Second)
}

// Case 5: a replica frozen (docker pause) for longer than the lease TTL.
// Its leases expire and the others take the slots; when it thaws it must
// not send vendor calls on the leases it lost: at the vendor, never more
// than C in flight.
func TestReplicaFrozen(t *testing.T) {
	// The concurrency binds (R = 100/s, C/latency = 15/s): the vendor
	// always has C calls in flight, so one call on a lost lease shows as
	// C+1 there.
	s := containertest.Start(t, containertest.Options{Rate: 100, Burst: 4, Concurrency: 3, VendorLatency: "200ms", LeaseTTL: 2 * time.Second})
	ctx := t.Context()
	gw3 := s.Gateways[2]
	if err := s.VendorStats.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	// gw3 holds two slots when it freezes. Their calls (1s) end at the
	// vendor before the leases can expire (2s after the grant: no renewal
	// happens before the freeze): a frozen replica cannot cancel a call
	// already sent, and no lease can make the vendor forget it, so a call
	// longer than the TTL would break I1 whatever the gateway did.
	p := pin(t, s, gw3, 2, time.Second)
	l := s.StartLoad(15)
	// Let the clients queue, gw3's among them (a third of them).
	if _, err := containertest.Within(ctx, 5*time.Second, func() bool {
		n, err := s.RedisClient().ZCard(ctx, containertest.Keys.Queue).Result()
		return err == nil && n >= 8
	}); err != nil {
		t.Fatalf("the clients did not queue: %v", err)
	}

	// Freeze gw3 while its own Redis calls (acquires, renewals) may be
	// answered only after it froze: pause Redis first, so that on thawing
	// gw3 may read a grant or a renewal that is already stale. Then the
	// load balancer stops sending to it.
	if err := s.Pause(ctx, s.Redis); err != nil {
		t.Fatal(err)
	}
	if err := s.Pause(ctx, gw3); err != nil {
		t.Fatal(err)
	}
	frozenAt := time.Now()
	if err := s.Unpause(ctx, s.Redis); err != nil {
		t.Fatal(err)
	}
	l.Disable(gw3.Name)
	// gw3's leases expire within the TTL; the others take the slots.
	back, err := containertest.Within(ctx, s.LeaseTTL+time.Second, func() bool { return len(held(t, s, p.ids)) == 0 })
	if err != nil {
		t.Errorf("the frozen replica's leases %v were still held %s after the freeze (lease TTL %s)", held(t, s, p.ids), back, s.LeaseTTL)
	}
	t.Logf("the frozen replica's pinned leases expired %s after the freeze", back.Round(time.Millisecond))
	serve(t, s, 15, 5*time.Second)                                           // the others serve on every slot
	time.Sleep(time.Until(frozenAt.Add(s.LeaseTTL + 1500*time.Millisecond))) // the freeze itself
	if err := s.Unpause(ctx, gw3); err != nil {
		t.Fatal(err)
	}
	thawAt := time.Now()
	l.Enable(gw3.Name)
	t.Logf("gw3 frozen for %s", thawAt.Sub(frozenAt).Round(time.Millisecond))
	// It serves again by itself.
	if _, err := containertest.Within(ctx, 5*time.Second, func() bool {
		return load.Count(l.Records(), func(r load.Record) bool {
			return r.Target == gw3.Name && r.Status == 200 && r.Start.After(thawAt)
		}) > 0
	}); err != nil {
		t.Errorf("gw3 answered no new request 200 within 5s of thawing")
	}
	serve(t, s, 30, 5*time.Second)
	recs := l.Stop()
	pins := p.records(t, 2)
	t.Log(load.Summary(append(recs, pins...)))
	for _, r := range pins {
		t.Logf("pinned request across the freeze: %s", r)
	}
	caught := 0
	// Requests caught in the freeze may fail, but cleanly.
	containertest.CheckAnswers(t, append(recs, pins...), func(r load.Record) string {
		if r.Target == gw3.Name && r.Start.Before(thawAt) && r.End.After(frozenAt) {
			caught++
			if r.Err != "" || r.Status == 500 || r.Code == "internal_error" {
				return "not a clean answer"
			}
			return ""
		}
		return load.Normal(r)
	})
	t.Logf("%d requests to gw3 were caught in the freeze", caught)
	v := s.CheckBudget(t) // I1 across the thaw is the point
	s.CheckExactlyOnce(t, append(recs, pins...), v, false)
	s.CheckDrained(t, time.Second)
}

// Case 6: SIGTERM to a replica under load. Requests in flight complete
// (drain), or get a clean answer when they outlive the shutdown timeout
// (deadline); either way its leases are released at once, not by TTL (10s
// here), and the replica exits 0.
func TestReplicaSIGTERM(t *testing.T) {
	for _, tc := range []struct {
		name     string
		shutdown time.Duration // SLUICE_SHUTDOWN_TIMEOUT
		pin      time.Duration // vendor latency of the calls in flight on gw3
	}{
		{"drain", 10 * time.Second, 3 * time.Second},
		{"deadline", time.Second, 6 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := containertest.Start(t, containertest.Options{LeaseTTL: 10 * time.Second, ShutdownTimeout: tc.shutdown, CallTimeout: 10 * time.Second})
			ctx := t.Context()
			gw3 := s.Gateways[2]
			if err := s.VendorStats.Reset(ctx); err != nil {
				t.Fatal(err)
			}
			p := pin(t, s, gw3, 2, tc.pin)
			l := s.StartLoad(12)
			serve(t, s, 5, 5*time.Second)

			l.Disable(gw3.Name)
			termAt := time.Now()
			leases, err := s.LeaseIDs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			queued, err := s.RedisClient().ZRange(ctx, containertest.Keys.Queue, 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Signal(ctx, gw3, "SIGTERM"); err != nil {
				t.Fatal(err)
			}
			var st *containertest.ContainerState
			exited, err := containertest.Within(ctx, tc.shutdown+3*time.Second, func() bool {
				st, err = s.State(ctx, gw3)
				return err == nil && !st.Running
			})
			if err != nil {
				t.Fatalf("gw3 still running %s after SIGTERM (shutdown timeout %s)", exited, tc.shutdown)
			}
			t.Logf("gw3 exited %s after SIGTERM, exit code %d", exited.Round(time.Millisecond), st.ExitCode)
			if st.ExitCode != 0 {
				t.Errorf("gw3 exit code %d after SIGTERM", st.ExitCode)
			}
			// Everything it held at SIGTERM, and whatever the others held
			// then (100ms calls), is gone the moment it has exited: nothing
			// waits for the 10s TTL.
			if left := held(t, s, leases); len(left) > 0 {
				t.Errorf("I3: leases %v of the SIGTERM moment still held after gw3 exited (lease TTL %s)", left, s.LeaseTTL)
			}
			if now, err := s.RedisClient().ZRange(ctx, containertest.Keys.Queue, 0, -1).Result(); err == nil {
				for _, id := range queued {
					if slices.Contains(now, id) {
						t.Errorf("I3: queued caller %s of the SIGTERM moment still queued after gw3 exited", id)
					}
				}
			}
			s.CheckUtilisation(t, 2*time.Second) // the others keep serving
			recs := l.Stop()
			pins := p.records(t, 2)
			t.Log(load.Summary(append(recs, pins...)))
			for _, r := range pins {
				t.Logf("request in flight on gw3 at SIGTERM: %s", r)
				if tc.pin < tc.shutdown && (r.Status != 200 || r.Err != "") {
					t.Errorf("a request in flight on gw3 at SIGTERM: %s; want it to complete", r)
				}
			}
			for _, r := range recs {
				if r.Target == gw3.Name && r.Start.After(termAt) {
					t.Errorf("a request was sent to gw3 after it was disabled: %s", r)
				}
			}
			// Every request got a well-formed answer: gw3's in flight at
			// SIGTERM too, even those the shutdown timeout cut.
			containertest.CheckAnswers(t, append(recs, pins...), func(r load.Record) string {
				if r.Target == gw3.Name && r.Err == "" && r.Status != 500 && r.Code != "internal_error" {
					return "" // a clean error is fine for a replica going away
				}
				return load.Normal(r)
			})
			v := s.CheckBudget(t)
			s.CheckExactlyOnce(t, append(recs, pins...), v, tc.pin < tc.shutdown)
			s.CheckDrained(t, time.Second)
		})
	}
}

// Case 7: 30% of the requests cancelled by their clients at random
// moments. After the load, no slot is leaked (all released at once: the
// TTL is 10s) and every key has a TTL.
func TestClientsCancel(t *testing.T) {
	s := containertest.Start(t, containertest.Options{LeaseTTL: 10 * time.Second, VendorLatency: "50ms-150ms"})
	rep, err := load.Run(t.Context(), load.Config{
		URLs:     urls(s),
		Clients:  16,
		Duration: 6 * time.Second,
		Key:      containertest.ClientKey,
		Cancel:   0.3,
		Timeout:  30 * time.Second,
		Vendor: &load.VendorCheck{
			StatsURL:    s.Vendor.URL + "/stats",
			Concurrency: s.Concurrency,
			Rate:        s.Rate,
			Burst:       s.Burst,
			Window:      time.Second,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sluice load: %d requests, statuses %v, cancelled %d, transport errors %d",
		rep.Requests, rep.Statuses, rep.Cancelled, rep.TransportErrors)
	if rep.Cancelled < rep.Requests/5 {
		t.Errorf("only %d of %d requests were cancelled", rep.Cancelled, rep.Requests)
	}
	checkLoadReport(t, rep)
	v := s.CheckBudget(t)
	t.Logf("vendor: %d calls ended by their client going away (499)", v.ByStatus[499])
	if v.Arrivals > int64(rep.Requests) {
		t.Errorf("I6: the vendor received %d calls for %d requests", v.Arrivals, rep.Requests)
	}
	s.CheckDrained(t, time.Second)
}

// checkLoadReport fails the test for each invariant check of sluice load
// that failed, and for answers other than 200 and 503 or no answer (I4).
func checkLoadReport(t *testing.T, rep *load.Report) {
	t.Helper()
	for _, c := range rep.Checks {
		t.Logf("sluice load check: %s %s: got %g, limit %g (%s)", c.Result, c.Name, c.Got, c.Limit, c.Detail)
		if c.Result == load.Fail {
			t.Errorf("sluice load check failed: %s: got %g, limit %g (%s)", c.Name, c.Got, c.Limit, c.Detail)
		}
	}
	for code, n := range rep.Statuses {
		if code != 200 && code != 503 {
			t.Errorf("I4: %d answers %d", n, code)
		}
	}
	if rep.TransportErrors > 0 {
		t.Errorf("I4: %d requests got no answer: %v", rep.TransportErrors, rep.TransportErrorKinds)
	}
}
