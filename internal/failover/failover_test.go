package failover_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
	"github.com/sluicehq/sluice/server"
)

// The budget under test. Vendor calls last longer than a failover takes,
// as LLM calls do, so calls granted before it are still in flight when the
// new primary admits again.
const (
	clients  = 3 // gateway-like replicas, each its own Redis client and semaphore
	workers  = 3 // goroutines per client: acquire, call, release, again
	size     = 4 // C
	leaseTTL = 6 * time.Second
)

var (
	rate    = limiter.Limit{Rate: 5, Burst: 2, Period: time.Second}
	latency = [2]time.Duration{2500 * time.Millisecond, 4 * time.Second}
)

var chatBody = []byte(`{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}`)

// The primary is SIGKILLed under load after its last grants were kept from
// its replica (asynchronous replication's window, made long on purpose), and
// the Sentinels promote the replica, which never saw them. At the vendor:
// calls in flight stay within 2C, calls in any window W within 2B + R*W (+1
// for the jitter between grant and arrival); admissions resume by
// themselves; afterwards no lease or waiter is left and every key has a TTL.
func TestPrimaryKilledUnderLoad(t *testing.T) {
	s := redistest.NewSentinel(t)
	vendor := mockvendortest.Start(t, mockvendor.Options{LatencyMin: latency[0], LatencyMax: latency[1]})
	budget := redistest.Budget(t)
	cfg := server.Config{RedisURL: s.URL(), RedisMode: "sentinel"}
	log := slog.New(slog.DiscardHandler)

	rec := newRecorder()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	var closers []func() error
	for range clients {
		rdb, closeRedis, err := server.OpenRedis(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		sem, err := semaphore.New(rdb, budget, semaphore.Options{Size: size, Rate: rate, LeaseTTL: leaseTTL})
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, sem.Close, closeRedis)
		for range workers {
			wg.Go(func() { work(ctx, t, sem, vendor, rec) })
		}
	}
	shutdown := func() {
		stop()
		wg.Wait()
		for _, c := range closers {
			_ = c() // Close releases what is held; a failed release expires by TTL
		}
		closers = nil
	}
	defer shutdown()

	rec.await(t, time.Time{}, size, 30*time.Second) // every slot taken
	held := time.Now()
	s.HoldReplication()
	rec.await(t, held, size/2, 30*time.Second) // grants the replica never sees
	killed := time.Now()
	old := s.KillPrimary(t)
	primary := s.WaitFailover(t, old, 30*time.Second)
	promoted := time.Since(killed)
	rec.await(t, killed, 2*size, 30*time.Second)
	stopped := time.Now()
	shutdown()

	// What the vendor saw.
	st := vendor.Stats()
	kill := killed.Sub(st.Epoch)
	resumed := rec.firstAfter(killed)
	during := [2]time.Duration{kill, st.Elapsed}
	t.Logf("%d grants kept from the replica in the %v before the kill; primary %s SIGKILLed; Sentinels promoted %s after %v; first admission after the kill at +%v",
		rec.countAfter(held)-rec.countAfter(killed), killed.Sub(held).Round(time.Millisecond), old, primary,
		promoted.Round(time.Millisecond), resumed.Round(time.Millisecond))
	t.Logf("vendor: %d calls; in flight at most %d before the kill, %d from the kill on (C = %d); admission errors during the outage: %v; leases lost: %d",
		st.Arrivals, maxInFlight(st.Requests, [2]time.Duration{0, kill}), maxInFlight(st.Requests, during), size, rec.errorKinds(), rec.lost())
	var cuts []time.Duration // calls cut because their lease was gone
	for _, r := range st.Requests {
		if r.Status == mockvendor.StatusClientGone && r.End < stopped.Sub(st.Epoch) {
			cuts = append(cuts, (r.End - kill).Round(time.Millisecond))
		}
	}
	t.Logf("vendor: calls of lost leases cut at %v after the kill", cuts)
	if st.MaxInFlight > 2*size {
		t.Errorf("%d calls in flight at the vendor: more than 2C = %d", st.MaxInFlight, 2*size)
	}
	for _, w := range []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second} {
		rw := int(float64(rate.Rate) * w.Seconds() / rate.Period.Seconds())
		got := st.MaxInWindow(w)
		t.Logf("window %v: at most %d calls at the vendor (B + R*W = %d)", w, got, rate.Burst+rw)
		if bound := 2*rate.Burst + rw + 1; got > bound {
			t.Errorf("window %v: %d calls at the vendor, more than 2B + R*W + 1 = %d", w, got, bound)
		}
	}
	if resumed <= 0 || resumed > 20*time.Second {
		t.Errorf("admissions resumed %v after the kill", resumed)
	}

	// Nothing left behind on the new primary.
	rdb := s.Client(t)
	check, err := semaphore.New(rdb, budget, semaphore.Options{Size: size, Rate: rate, LeaseTTL: leaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 2*leaseTTL)
	defer cancel()
	began := time.Now()
	for {
		state, err := check.State(cctx)
		if err == nil && state.Holders == 0 && state.Waiters == 0 {
			break
		}
		if cctx.Err() != nil {
			t.Fatalf("left behind after %v: %+v %v", 2*leaseTTL, state, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if keys, err := redistest.KeysWithoutTTL(cctx, rdb, "*"+budget+"*"); err != nil || len(keys) > 0 {
		t.Fatalf("keys without TTL: %v %v", keys, err)
	}
	t.Logf("no lease or waiter left %v after the run; every key has a TTL", time.Since(began).Round(time.Millisecond))
}

// work is one gateway worker: wait for admission (2s queue deadline), call
// the vendor under the lease's context, release; back off after an error.
func work(ctx context.Context, t *testing.T, sem *semaphore.Semaphore, vendor *mockvendortest.Server, rec *recorder) {
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		lease, err := sem.Acquire(qctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			rec.failed(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(10+rand.IntN(50)) * time.Millisecond):
			}
			continue
		}
		rec.granted(time.Now())
		// The call ends when it is done, the lease is lost, or the run stops.
		cctx, cancel := context.WithCancel(lease.Context())
		unhook := context.AfterFunc(ctx, cancel)
		if err := call(cctx, vendor); err != nil && cctx.Err() == nil {
			t.Errorf("vendor call: %v", err)
		}
		unhook()
		cancel()
		if errors.Is(context.Cause(lease.Context()), semaphore.ErrLeaseLost) {
			rec.leaseLost()
		}
		_ = lease.Release(ctx) // shielded: runs after ctx's end too
	}
}

func call(ctx context.Context, vendor *mockvendortest.Server) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, vendor.URL+"/v1/chat/completions", bytes.NewReader(chatBody))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := vendor.Client().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// maxInFlight returns the most requests in flight at any instant of the
// window (offsets from the vendor's epoch). A request is in flight from its
// Start until its End; one still running has no End.
func maxInFlight(reqs []mockvendor.Request, window [2]time.Duration) int {
	at := func(t time.Duration) int {
		n := 0
		for _, r := range reqs {
			if r.Start <= t && (r.End == 0 || t < r.End) {
				n++
			}
		}
		return n
	}
	best := at(window[0])
	for _, r := range reqs {
		if r.Start >= window[0] && r.Start <= window[1] {
			best = max(best, at(r.Start))
		}
	}
	return best
}

// recorder keeps the admissions and errors of every worker.
type recorder struct {
	mu     sync.Mutex
	grants []time.Time
	errs   map[string]int
	losses int
	news   chan struct{} // a grant happened
}

func newRecorder() *recorder {
	return &recorder{errs: map[string]int{}, news: make(chan struct{}, 1)}
}

func (r *recorder) granted(at time.Time) {
	r.mu.Lock()
	r.grants = append(r.grants, at)
	r.mu.Unlock()
	select {
	case r.news <- struct{}{}:
	default:
	}
}

func (r *recorder) failed(err error) {
	kind := "other"
	switch {
	case errors.Is(err, semaphore.ErrUnavailable):
		kind = "unavailable"
	case errors.Is(err, semaphore.ErrQueueTimeout):
		kind = "queue timeout"
	}
	r.mu.Lock()
	r.errs[kind]++
	r.mu.Unlock()
}

func (r *recorder) leaseLost() {
	r.mu.Lock()
	r.losses++
	r.mu.Unlock()
}

func (r *recorder) lost() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.losses
}

func (r *recorder) errorKinds() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.errs)
}

// countAfter returns the number of grants after t.
func (r *recorder) countAfter(t time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, g := range r.grants {
		if g.After(t) {
			n++
		}
	}
	return n
}

// firstAfter returns how long after t the first grant came (0: none).
func (r *recorder) firstAfter(t time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.grants, func(g time.Time) bool { return g.After(t) })
	if i < 0 {
		return 0
	}
	first := r.grants[i]
	for _, g := range r.grants[i:] {
		if g.After(t) && g.Before(first) {
			first = g
		}
	}
	return first.Sub(t)
}

// await waits until n grants came after since, failing the test after
// timeout.
func (r *recorder) await(t *testing.T, since time.Time, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for r.countAfter(since) < n {
		select {
		case <-r.news:
		case <-deadline.C:
			t.Fatalf("only %d admissions within %v after %v (errors: %v)", r.countAfter(since), timeout, since.Format(time.StampMilli), r.errorKinds())
		}
	}
}
