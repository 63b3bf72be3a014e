package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/load"
	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// The budget the three replicas share, and the system around it.
const (
	rateR    = 20 // R, vendor calls per second (SLUICE_RATE 20/s)
	burstB   = 3  // B (SLUICE_BURST)
	concC    = 3  // C (SLUICE_CONCURRENCY)
	leaseTTL = 2 * time.Second
	// waiterTTL is semaphore.Options.WaiterTTL as sluice serve sets it (the
	// default, not configurable): a dead replica's queued callers keep
	// their place at the head of the shared FIFO queue until it passes.
	waiterTTL    = 2 * time.Second
	queueTimeout = 2 * time.Second
	maxAttempts  = 3
	// The vendor's latency is uniform in [latMin, latMax].
	latMin = 50 * time.Millisecond
	latMax = 150 * time.Millisecond

	replicas       = 3
	clients        = 30 // well above what the budget serves at once: demand exceeds it
	cancelFraction = 0.3
	loadFor        = 11500 * time.Millisecond // from the vendor's reset to the last request started
	// pinAfter is when gw3 gets a slow request (from the vendor's reset);
	// it is killed once that request holds a slot, usually within 2s.
	pinAfter = 3500 * time.Millisecond
	// pinLatency is the vendor's latency for the slow request: longer than
	// it can take to be admitted and seen in Redis, shorter than the call
	// timeout (5s).
	pinLatency = 4 * time.Second
	// pinSeen is how long a lease must stay in Redis to be the slow
	// request's: longer than any other call holds one (latMax, plus a
	// cancellation grace of 250ms, plus scheduling).
	pinSeen = 750 * time.Millisecond
	// slack covers scheduling and the sampling of the vendor's arrivals in
	// the bounds on time below.
	slack = 500 * time.Millisecond

	clientKey = "e2e-client-key"
	vendorKey = "e2e-vendor-key"
)

// Windows are the window lengths W at which I2 is checked.
var windows = []time.Duration{time.Second, 250 * time.Millisecond}

// TestReplicasUnderLoadWithCancellationsAndSIGKILL runs three `sluice
// serve` processes sharing one budget in a real Redis in front of `sluice
// mockvendor`, under load above the budget with 30% of the requests
// cancelled by their clients at random moments, and one replica SIGKILLed
// midway. The invariants I1-I6 are checked at the vendor, the answers at
// the clients, and what is left in Redis afterwards. Each phase is a method
// of run, in the order of the test.
func TestReplicasUnderLoadWithCancellationsAndSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: skipped with -short")
	}
	r := startSystem(t)
	r.startLoad()
	r.killReplicaHoldingASlot()
	r.finishLoad()
	r.checkBudget()
	r.checkAnswers()
	r.checkUtilisation()
	r.checkNoStall()
	r.checkNoRetryStorm()
	r.checkDrained()
}

// run is the system under test and what the test measured of it, phase
// after phase.
type run struct {
	t      *testing.T
	rdb    *redis.Client
	budget string
	vendor *proc
	stats  *mockvendor.Client // the vendor's statistics
	gws    []*proc

	// Set by startLoad.
	load    *load.Load
	smp     *sampler
	resetAt time.Time // the vendor's clock starts (at most) here

	// Set by killReplicaHoldingASlot.
	pinAt, killAt time.Time
	pinned        string // the lease of gw3's slow request
	pins          int    // how many times that request was sent
	leasesAtKill  []string

	// Set by finishLoad.
	stopAt     time.Time
	recs       []load.Record
	samples    []sample
	sampleErrs int
	v          *mockvendor.Report // the vendor's report for W = 1s
	reports    map[time.Duration]*mockvendor.Report
}

// keys are the Redis keys of the run's budget.
func (r *run) keys() redisstate.Keys { return redisstate.For(r.budget) }

// vendorTime converts a moment to the vendor's clock (since its reset).
func (r *run) vendorTime(at time.Time) time.Duration { return at.Sub(r.resetAt) }

// startSystem starts Redis, the vendor and the three gateways, and returns
// once all are ready.
func startSystem(t *testing.T) *run {
	ctx := t.Context()
	srv := redistest.New(t)
	r := &run{t: t, rdb: srv.Client(t), budget: redistest.Budget(t)}
	redisURL := srv.URL()

	bin := buildSluice(t, t.TempDir())
	r.vendor = startProc(t, bin, "vendor", map[string]string{
		"SLUICE_MOCK_LISTEN":  "127.0.0.1:0",
		"SLUICE_MOCK_LATENCY": latMin.String() + "-" + latMax.String(),
		"SLUICE_MOCK_KEY":     vendorKey, // the gateways must add the vendor key
	}, "mockvendor")
	if err := waitOK(ctx, r.vendor.URL+"/healthz", startTimeout); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.stats, err = mockvendor.NewClient(r.vendor.URL+"/stats", httpClient, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"SLUICE_LISTEN":           "127.0.0.1:0",
		"SLUICE_REDIS_URL":        redisURL,
		"SLUICE_UPSTREAM_URL":     r.vendor.URL,
		"SLUICE_UPSTREAM_API_KEY": vendorKey,
		"SLUICE_BUDGET":           r.budget,
		"SLUICE_RATE":             fmt.Sprintf("%d/s", rateR),
		"SLUICE_BURST":            strconv.Itoa(burstB),
		"SLUICE_CONCURRENCY":      strconv.Itoa(concC),
		"SLUICE_LEASE_TTL":        leaseTTL.String(),
		"SLUICE_QUEUE_TIMEOUT":    queueTimeout.String(),
		"SLUICE_CALL_TIMEOUT":     "5s",
		"SLUICE_REQUEST_TIMEOUT":  "15s",
		"SLUICE_MAX_ATTEMPTS":     strconv.Itoa(maxAttempts),
		"SLUICE_SHUTDOWN_TIMEOUT": "2s",
		"SLUICE_API_KEYS":         clientKey,
		"SLUICE_LOG_LEVEL":        "info",
		"SLUICE_FORWARD_HEADERS":  "X-Mock-Latency", // the slow request's, for the mock vendor
	}
	// A newer gateway waits this long, after a client cancels its vendor
	// call, for the vendor to see the call end before the slot goes to
	// someone else.
	if strings.Contains(serveHelp(t, bin), "SLUICE_CANCEL_GRACE") {
		env["SLUICE_CANCEL_GRACE"] = "250ms"
		t.Log("SLUICE_CANCEL_GRACE=250ms")
	} else {
		t.Log("sluice serve has no SLUICE_CANCEL_GRACE: not set")
	}
	r.gws = make([]*proc, replicas)
	for i := range r.gws {
		r.gws[i] = startProc(t, bin, fmt.Sprintf("gw%d", i+1), env, "serve")
	}
	for _, gw := range r.gws {
		if err := waitOK(ctx, gw.URL+"/readyz", startTimeout); err != nil {
			t.Fatalf("%s: %v", gw.name, err)
		}
	}
	// Runs before the processes are killed (cleanups run last first).
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append([]*proc{r.vendor}, r.gws...) {
				w := slices.DeleteFunc(p.grep(`"level":"WARN"`), func(l string) bool { return strings.Contains(l, `"outcome":"queue_timeout"`) })
				if len(w) > 0 {
					t.Logf("--- warnings of %s other than queue timeouts (%d, the last 20):\n%s", p.name, len(w), strings.Join(w[max(0, len(w)-20):], "\n"))
				}
				if e := p.grep(`"level":"ERROR"`); len(e) > 0 {
					t.Logf("--- errors of %s (%d, the last 20):\n%s", p.name, len(e), strings.Join(e[max(0, len(e)-20):], "\n"))
				}
				t.Logf("--- last lines of %s (%s):\n%s", p.name, p.URL, p.tail(20))
			}
		}
	})
	t.Logf("Redis %s, budget %s: R=%d/s B=%d C=%d, lease TTL %s, queue timeout %s; vendor latency %s-%s; %d clients, %.0f%% cancelled, for %s, SIGKILL of gw3 after +%s",
		redisURL, r.budget, rateR, burstB, concC, leaseTTL, queueTimeout, latMin, latMax, clients, 100*cancelFraction, loadFor, pinAfter)
	return r
}

// startLoad starts the load, the vendor's statistics from zero, and the
// sampling of its arrivals.
func (r *run) startLoad() {
	if err := r.stats.Reset(r.t.Context()); err != nil {
		r.t.Fatal(err)
	}
	r.resetAt = time.Now()
	r.smp = startSampler(r.stats, 25*time.Millisecond)
	r.t.Cleanup(r.smp.stop) // on a failure before the end
	r.load = startLoad(r.t, r.gws, clientKey, clients, cancelFraction)
}

// killReplicaHoldingASlot SIGKILLs gw3, midway, while it surely holds a
// slot: it gets a slow request, and is killed once that request's lease is
// in Redis. As a load balancer would, the clients stop sending to it. I3:
// the killed replica's slots come back within the lease TTL.
func (r *run) killReplicaHoldingASlot() {
	t, ctx := r.t, r.t.Context()
	victim := r.gws[2]
	time.Sleep(time.Until(r.resetAt.Add(pinAfter))) // the schedule of the load, not a synchronisation
	r.pinAt = time.Now()
	pinned, pinDone, pins := pinSlot(t, r.load, victim.name, r.rdb, r.keys().Leases)
	r.pinned, r.pins = pinned, pins
	r.load.Disable(victim.name)
	r.killAt = time.Now() // before the signal: its clients may see their connections cut at once
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-victim.done:
	case <-time.After(5 * time.Second):
		t.Fatal("gw3 still running 5s after SIGKILL")
	}
	if !victim.killedBySIGKILL() {
		t.Errorf("gw3 ended otherwise than by SIGKILL: %v", victim.err)
	}
	var err error
	if r.leasesAtKill, err = r.rdb.ZRange(ctx, r.keys().Leases, 0, -1).Result(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL gw3 at +%s, holding the lease %s of a slow request (sent at +%s, %d time(s)); leases in Redis then: %d",
		r.vendorTime(r.killAt).Round(time.Millisecond), pinned, r.vendorTime(r.pinAt).Round(time.Millisecond), pins, len(r.leasesAtKill))

	// I3: the killed replica's lease leaves Redis (and with it every lease
	// of the kill's moment).
	var left []string
	pinnedBack := time.Duration(0)
	for {
		now, err := r.rdb.ZRange(ctx, r.keys().Leases, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pinnedBack == 0 && !slices.Contains(now, pinned) {
			pinnedBack = time.Since(r.killAt)
		}
		left = slices.DeleteFunc(slices.Clone(r.leasesAtKill), func(id string) bool { return !slices.Contains(now, id) })
		if len(left) == 0 || time.Since(r.killAt) > leaseTTL+2*slack {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	leasesBack := time.Since(r.killAt)
	if len(left) > 0 || leasesBack > leaseTTL+slack {
		t.Errorf("I3: leases of the SIGKILL moment still held %s after it: %q (lease TTL %s)", leasesBack.Round(time.Millisecond), left, leaseTTL)
	}
	t.Logf("I3: the killed replica's lease left Redis %s after the kill, all %d leases of that moment %s after it (lease TTL %s)",
		pinnedBack.Round(time.Millisecond), len(r.leasesAtKill), leasesBack.Round(time.Millisecond), leaseTTL)
	select {
	case rec := <-pinDone:
		if rec.Status != 0 {
			t.Errorf("the slow request to gw3 got an answer although gw3 was killed before the vendor answered: %s", rec)
		}
	case <-time.After(5 * time.Second):
		t.Error("the slow request to gw3 did not end within 5s of the kill")
	}
}

// finishLoad lets the load run its course, stops it and reads what the
// vendor saw.
func (r *run) finishLoad() {
	t, ctx := r.t, r.t.Context()
	time.Sleep(time.Until(r.resetAt.Add(loadFor))) // the rest of the load
	r.stopAt = time.Now()
	r.recs = r.load.Stop()
	r.samples, r.sampleErrs = r.smp.finish()
	r.reports = map[time.Duration]*mockvendor.Report{}
	var err error
	for _, w := range windows {
		if r.reports[w], err = r.stats.StatsWindow(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	if r.v, err = r.stats.StatsWindow(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v := r.v
	t.Logf("load: %s", load.Summary(r.recs))
	t.Logf("vendor: %d arrivals in %.1fs, by status %v, mean 2xx latency %.0fms, max in flight %d, in flight now %d; %d samples of its arrivals (%d failed)",
		v.Arrivals, v.ElapsedSeconds, v.ByStatus, v.MeanOKLatencyMS, v.MaxInFlight, v.InFlight, len(r.samples), r.sampleErrs)
	t.Logf("vendor arrivals per 500ms from its reset: %v", perStep(r.samples, 500*time.Millisecond))
}

// checkBudget checks I1, never more than C in flight at the vendor, and
// I2, never more than B + R*W arrivals in any window W.
func (r *run) checkBudget() {
	t := r.t
	t.Logf("I1: max in flight at the vendor %d (C = %d)", r.v.MaxInFlight, concC)
	if r.v.MaxInFlight > concC {
		t.Errorf("I1: the vendor saw %d calls in flight, more than C = %d", r.v.MaxInFlight, concC)
	}
	for _, w := range windows {
		bound := float64(burstB) + rateR*w.Seconds()
		rep := r.reports[w]
		t.Logf("I2: max arrivals in any %s window %d (B + R*W = %g)", w, rep.MaxInWindow, bound)
		if float64(rep.MaxInWindow) > bound {
			t.Errorf("I2: the vendor saw %d arrivals within %s, more than B + R*W = %d + %d/s * %s = %g",
				rep.MaxInWindow, w, burstB, rateR, w, bound)
		}
		if rep.Dropped > 0 {
			t.Errorf("I2: the vendor dropped %d records: not every window was checked", rep.Dropped)
		}
	}
}

// checkAnswers checks I4: every request to a live replica got one
// well-formed answer, 200 or 503 queue_timeout with Retry-After. gw3's
// requests in flight at the kill are lost with it; those it answered
// before must be normal.
func (r *run) checkAnswers() {
	t := r.t
	victim := r.gws[2].name
	bad, lost, lostSent := 0, 0, 0
	for _, rec := range r.recs {
		why := load.Normal(rec)
		if rec.Target == victim {
			switch {
			case !rec.Start.Before(r.killAt):
				lostSent++ // picked just before the disable, sent to a dead port
				why = ""
			case rec.End.After(r.killAt):
				lost++
				if rec.Status != 0 && why != "" {
					why = "an answer from the replica being killed, but not a normal one: " + why
				} else {
					why = ""
				}
			}
		}
		if why != "" {
			if bad < 10 {
				t.Errorf("I4: %s: %s", rec, why)
			}
			bad++
		}
	}
	t.Logf("I4: %d bad answers; gw3's requests: %d lost in flight at the kill, %d sent to it after", bad, lost, lostSent)
	if bad > 10 {
		t.Errorf("I4: ... %d bad answers in all", bad)
	}
	if ok := load.Count(r.recs, isOK); r.v.ByStatus[http.StatusOK] < int64(ok) {
		t.Errorf("I4: the clients got %d answers 200, the vendor answered only %d", ok, r.v.ByStatus[http.StatusOK])
	}
	afterKill200 := load.Count(r.recs, func(rec load.Record) bool { return rec.Target != victim && isOK(rec) && rec.End.After(r.killAt) })
	if afterKill200 == 0 {
		t.Error("the surviving replicas answered no request 200 after the kill")
	}
	if n := load.Count(r.recs, isCancelled); n < len(r.recs)/5 {
		t.Errorf("only %d of %d requests were cancelled by their client (want about %.0f%%)", n, len(r.recs), 100*cancelFraction)
	}
}

// checkUtilisation checks I5: over the steady parts (after the burst, away
// from the kill), the vendor receives at least 90% of min(R, C/latency).
func (r *run) checkUtilisation() {
	t := r.t
	meanLat := (latMin + latMax) / 2
	budgetRate := min(float64(rateR), float64(concC)/meanLat.Seconds())
	recovered := max(leaseTTL, waiterTTL) + slack
	for _, seg := range []struct {
		name     string
		from, to time.Duration
	}{
		{"before the slow request and the kill", time.Second, r.vendorTime(r.pinAt)},
		{"after the kill, once its slots were back", r.vendorTime(r.killAt) + recovered, r.vendorTime(r.stopAt)},
	} {
		got, over := rate(r.samples, seg.from, seg.to)
		t.Logf("I5: %s (+%s to +%s, %s sampled): %.1f calls/s at the vendor, %.0f%% of min(R, C/latency) = min(%d, %d/%s) = %.1f/s",
			seg.name, seg.from.Round(time.Millisecond), seg.to.Round(time.Millisecond), over.Round(time.Millisecond),
			got, 100*got/budgetRate, rateR, concC, meanLat, budgetRate)
		if over < 2*time.Second {
			t.Errorf("I5: %s: only %s measured", seg.name, over)
		}
		if got < 0.9*budgetRate {
			t.Errorf("I5: %s: the vendor received %.1f calls/s, less than 90%% of the budget's %.1f/s", seg.name, got, budgetRate)
		}
	}
}

// checkNoStall checks I3 for the survivors: they keep being admitted, no
// pause in the arrivals at the vendor longer than the TTLs that keep the
// dead replica's slots (leases) and queue places (waiters), plus a vendor
// call, plus slack.
func (r *run) checkNoStall() {
	t := r.t
	pause, pauseAt := longestPause(r.samples, 0, r.vendorTime(r.stopAt))
	pauseBound := max(leaseTTL, waiterTTL) + latMax + slack
	t.Logf("I3: longest pause between arrivals at the vendor %s (at most; from +%s; the kill at +%s; bound %s)",
		pause.Round(time.Millisecond), pauseAt.Round(time.Millisecond), r.vendorTime(r.killAt).Round(time.Millisecond), pauseBound)
	if pause > pauseBound {
		t.Errorf("I3: no vendor call started for %s from +%s (bound max(lease TTL, waiter TTL) + latency + slack = %s)", pause.Round(time.Millisecond), pauseAt.Round(time.Millisecond), pauseBound)
	}
}

// checkNoRetryStorm checks I6. The vendor never fails here, so the policy
// allows no retry at all: at most one vendor call per request, and no
// retry counted by the survivors (gw3's counters died with it).
func (r *run) checkNoRetryStorm() {
	t, v := r.t, r.v
	sent := len(r.recs) + r.pins
	t.Logf("I6: %d vendor arrivals for %d requests sent (policy bound %d x %d = %d)", v.Arrivals, sent, sent, maxAttempts, maxAttempts*sent)
	if v.Arrivals > int64(maxAttempts*sent) {
		t.Errorf("I6: the vendor received %d calls for %d requests: more than %d attempts each", v.Arrivals, sent, maxAttempts)
	}
	if v.Arrivals > int64(sent) {
		t.Errorf("I6: the vendor, which never fails here, received %d calls for %d requests: some were retried or duplicated", v.Arrivals, sent)
	}
	for _, gw := range r.gws[:2] {
		n, series, err := metricSum(t.Context(), gw, "sluice_retries_total")
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			t.Errorf("I6: %s retried %g times against a vendor that never fails: %q", gw.name, n, series)
		}
	}
}

// checkDrained checks I3 after the load: once the killed replica's TTL has
// passed (it has: the kill was long ago), Redis holds no lease, queued
// caller or waiter, the vendor no call; and every key of the budget has a
// TTL.
func (r *run) checkDrained() {
	t, ctx := r.t, r.t.Context()
	time.Sleep(time.Until(r.killAt.Add(leaseTTL)))
	var held map[string]int64
	drainedAt := time.Now()
	for {
		held = map[string]int64{}
		for part, key := range map[string]string{"leases": r.keys().Leases, "queue": r.keys().Queue} {
			n, err := r.rdb.ZCard(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if n > 0 {
				held[part] = n
			}
		}
		if len(held) == 0 || time.Since(drainedAt) > time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(held) > 0 {
		members, _ := r.rdb.ZRangeWithScores(ctx, r.keys().Leases, 0, -1).Result()
		redisNow, _ := r.rdb.Time(ctx).Result()
		t.Errorf("I3: after the load (and %s after the kill), Redis still holds %v (ZCARD); leases %v, Redis time %v",
			time.Since(r.killAt).Round(time.Millisecond), held, members, redisNow.UnixMicro())
	} else {
		t.Logf("I3: no lease, queued caller or waiter left %s after the load (%s after the kill)",
			time.Since(r.stopAt).Round(time.Millisecond), time.Since(r.killAt).Round(time.Millisecond))
	}
	if v, err := r.stats.StatsWindow(ctx, time.Second); err != nil {
		t.Fatal(err)
	} else if v.InFlight != 0 {
		t.Errorf("I3: the vendor still has %d calls in flight after the load", v.InFlight)
	}
	keys, err := r.rdb.Keys(ctx, r.keys().Prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	noTTL, err := redistest.KeysWithoutTTL(ctx, r.rdb, r.keys().Prefix+"*")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("I3: %d keys under %s, %d without a TTL: %q", len(keys), r.keys().Prefix+"*", len(noTTL), keys)
	if len(noTTL) > 0 {
		t.Errorf("I3: keys without a TTL: %q", noTTL)
	}
}

// pinSlot sends gateway gw a request that the vendor answers after
// pinLatency (again after each queue timeout) and returns, once its lease is
// surely in Redis, the lease's id, the channel of the request's record and
// how many times it was sent. Its lease is the one seen in key for pinSeen:
// no other call lasts that long.
func pinSlot(t *testing.T, l *load.Load, gw string, rdb *redis.Client, key string) (string, <-chan load.Record, int) {
	t.Helper()
	h := http.Header{mockvendor.HeaderLatency: {pinLatency.String()}}
	done := make(chan load.Record, 1)
	sent := 0
	send := func() {
		sent++
		go func() { done <- l.Send(context.Background(), gw, h) }()
	}
	send()
	first := map[string]time.Time{}
	deadline := time.Now().Add(3 * queueTimeout)
	for time.Now().Before(deadline) {
		select {
		case r := <-done:
			if r.Status == http.StatusServiceUnavailable && r.Code == "queue_timeout" {
				send()
				continue
			}
			t.Fatalf("the slow request to %s ended before its lease was seen: %s", gw, r)
		default:
		}
		ids, err := rdb.ZRange(t.Context(), key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		maps.DeleteFunc(first, func(id string, _ time.Time) bool { return !slices.Contains(ids, id) })
		for _, id := range ids {
			if at, ok := first[id]; !ok {
				first[id] = now
			} else if now.Sub(at) >= pinSeen {
				return id, done, sent
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the slow request to %s held no slot within %s (sent %d times)", gw, 3*queueTimeout, sent)
	return "", nil, 0
}
