package semaphore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/invariant"
	"github.com/sluicehq/sluice/internal/multiproc"
	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/limiter"
)

// vendor is a stand-in for the rate-limited service: it measures, where it
// counts, how many calls are in flight at once.
type vendor struct {
	inFlight, maxInFlight, calls atomic.Int64
}

func (v *vendor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := v.inFlight.Add(1)
	for m := v.maxInFlight.Load(); n > m && !v.maxInFlight.CompareAndSwap(m, n); m = v.maxInFlight.Load() {
	}
	v.calls.Add(1)
	d, _ := time.ParseDuration(r.URL.Query().Get("d"))
	time.Sleep(d) // the vendor's own latency
	v.inFlight.Add(-1)
}

var admitLimit = limiter.Limit{Rate: 200, Burst: 4, Period: time.Second}

const admitSize = 3

// admitLoad runs workers that each admit (slot + token), call the vendor,
// and release, with a quarter of the requests cancelled at a random moment
// (while waiting, or while holding the slot: then only the release sees it).
// It returns the Redis times of the grants, in microseconds.
func admitLoad(t testing.TB, rdb redis.UniversalClient, budget, vendorURL string, workers, rounds int) []int64 {
	s, err := New(rdb, budget, Options{Size: admitSize, Rate: admitLimit})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mu sync.Mutex
	var grants []int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				ctx, cancel := context.WithCancel(context.Background())
				if rand.IntN(4) == 0 {
					time.AfterFunc(time.Duration(rand.IntN(20))*time.Millisecond, cancel)
				}
				l, err := s.Acquire(ctx)
				if err != nil {
					cancel()
					if !errors.Is(err, context.Canceled) {
						t.Error(err)
					}
					continue
				}
				mu.Lock()
				grants = append(grants, l.granted)
				mu.Unlock()
				// The call runs under the lease's context, not the
				// client's: a call aborted by the client would still be in
				// flight at the vendor for a moment after the slot is
				// released (the gateway holds the slot for a grace period
				// in that case; see server).
				req, _ := http.NewRequestWithContext(l.Context(), "GET", vendorURL+"?d="+strconv.Itoa(1+rand.IntN(5))+"ms", nil)
				if l.Held() {
					if resp, err := http.DefaultClient.Do(req); err == nil {
						resp.Body.Close()
					}
				}
				if err := l.Release(ctx); err != nil {
					t.Error(err)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	return grants
}

// Admission across goroutines and processes, with cancellations: the vendor
// never sees more than Size calls at once, the grants never exceed
// Burst + Rate*W in any window W, and nothing is left behind.
func TestAdmissionKeepsConcurrencyAndRateAcrossProcesses(t *testing.T) {
	srv := redistest.New(t)
	rdb := srv.Client(t)
	budget := redistest.Budget(t)
	v := &vendor{}
	vs := httptest.NewServer(v)
	defer vs.Close()
	const procs = 2
	children := make([]*multiproc.Child, procs)
	for i := range children {
		children[i] = multiproc.Start(t, "TestChildAdmit", "admit", "REDIS_ADDR="+srv.Addr(), "BUDGET="+budget, "VENDOR="+vs.URL)
	}
	grants := admitLoad(t, rdb, budget, vs.URL, 8, 12)
	for _, c := range children {
		grants = append(grants, c.ExpectInts(t, "GRANTS")...)
	}
	if m := v.maxInFlight.Load(); m > admitSize || m == 0 {
		t.Errorf("vendor saw %d calls in flight, size is %d", m, admitSize)
	}
	for _, w := range []time.Duration{0, 10 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond} {
		limit := admitLimit.Burst + int(float64(admitLimit.Rate)*w.Seconds())
		if got := invariant.MaxInWindow(grants, w.Microseconds()); got > limit {
			t.Errorf("window %s: %d grants > burst + rate*W = %d", w, got, limit)
		}
	}
	checkClean(t, rdb, budget)
	t.Logf("%d grants, %d vendor calls, max in flight %d", len(grants), v.calls.Load(), v.maxInFlight.Load())
}

func TestChildAdmit(t *testing.T) {
	if multiproc.Role() != "admit" {
		t.Skip("entry point of child processes")
	}
	rdb := redis.NewClient(&redis.Options{Addr: multiproc.Env(t, "REDIS_ADDR")})
	defer rdb.Close()
	grants := admitLoad(t, rdb, multiproc.Env(t, "BUDGET"), multiproc.Env(t, "VENDOR"), 8, 12)
	multiproc.PrintInts("GRANTS", grants)
}

// checkClean asserts no lease or waiter is left and every key has a TTL.
func checkClean(t testing.TB, rdb redis.UniversalClient, budget string) {
	t.Helper()
	s := newSem(t, rdb, budget, Options{Size: 1})
	if st := state(t, s); st.Holders != 0 || st.Waiters != 0 {
		t.Errorf("left behind: %+v", st)
	}
	keys, err := redistest.KeysWithoutTTL(context.Background(), rdb, redisstate.Prefix(budget)+"*")
	if err != nil || len(keys) > 0 {
		t.Errorf("keys without TTL: %v %v", keys, err)
	}
}

// Waiters are served in the order they queued, whichever replica they are on.
func TestFIFOAcrossReplicas(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	testFIFO(t, rdb, redistest.Budget(t))
}

func testFIFO(t *testing.T, rdb redis.UniversalClient, budget string) {
	sems := []*Semaphore{
		newSem(t, rdb, budget, Options{Size: 1}),
		newSem(t, rdb, budget, Options{Size: 1}),
		newSem(t, rdb, budget, Options{Size: 1}),
	}
	ctx := context.Background()
	held, err := sems[0].Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 9
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := sems[i%3].Acquire(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			_ = l.Release(ctx)
		}()
		waitFor(t, func() bool { return state(t, sems[0]).Waiters == int64(i+1) })
	}
	_ = held.Release(ctx)
	wg.Wait()
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	if !slices.IsSorted(got) || len(got) != n {
		t.Fatalf("served in order %v, want 0..%d", got, n-1)
	}
}

// A holder process killed with SIGKILL loses its slot to others within the
// lease TTL; a killed waiter process leaves the queue within the waiter TTL.
func TestKilledHolderAndWaiterLeaveNoTrace(t *testing.T) {
	srv := redistest.New(t)
	rdb := srv.Client(t)
	budget := redistest.Budget(t)
	const ttl = time.Second
	env := []string{"REDIS_ADDR=" + srv.Addr(), "BUDGET=" + budget}
	holder := multiproc.Start(t, "TestChildHold", "hold", env...)
	holder.Expect(t, "HELD")
	s := newSem(t, rdb, budget, Options{Size: 1, LeaseTTL: ttl, WaiterTTL: 200 * time.Millisecond})

	waiter := multiproc.Start(t, "TestChildHold", "wait", env...)
	waitFor(t, func() bool { return state(t, s).Waiters == 1 })
	waiter.Kill()
	_ = waiter.Wait()
	waitFor(t, func() bool { return state(t, s).Waiters == 0 })

	holder.Kill()
	_ = holder.Wait()
	killed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), ttl+time.Second)
	defer cancel()
	l, err := s.Acquire(ctx)
	if err != nil {
		t.Fatalf("slot of a killed holder did not come back within its TTL: %v", err)
	}
	t.Logf("slot back %s after SIGKILL (lease TTL %s)", time.Since(killed).Round(time.Millisecond), ttl)
	_ = l.Release(ctx)
	checkClean(t, rdb, budget)
}

func TestChildHold(t *testing.T) {
	role := multiproc.Role()
	if role != "hold" && role != "wait" {
		t.Skip("entry point of child processes")
	}
	rdb := redis.NewClient(&redis.Options{Addr: multiproc.Env(t, "REDIS_ADDR")})
	s, err := New(rdb, multiproc.Env(t, "BUDGET"), Options{Size: 1, LeaseTTL: time.Second, WaiterTTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Println("HELD")
	select {} // until killed
}

// Redis unreachable: calls fail with an error within their deadline, leases
// end (their holder must stop), and once Redis is back everything works again
// without a restart and nothing is held.
func TestRedisDownFailsWithinDeadlineAndRecovers(t *testing.T) {
	srv := redistest.NewIsolated(t)
	// Client timeouts far longer than the caller's deadline: Acquire must
	// not depend on them to return in time (only on the client honouring
	// ctx deadlines, as the package doc asks).
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		DialTimeout: 200 * time.Millisecond, ContextTimeoutEnabled: true})
	defer rdb.Close()
	budget := redistest.Budget(t)
	s := newSem(t, rdb, budget, Options{Size: 2, LeaseTTL: 600 * time.Millisecond, WaiterTTL: 100 * time.Millisecond})
	held, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	srv.Pause(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	_, err = s.Acquire(ctx)
	if !errors.Is(err, ErrQueueTimeout) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want a queue timeout because Redis did not answer", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Acquire with a 300ms deadline returned after %s", took)
	}
	cancel()
	<-held.Context().Done() // cannot renew: the holder must learn it lost the slot
	if !errors.Is(held.Err(), ErrLeaseLost) || held.Held() {
		t.Fatalf("lease with Redis down: Err %v, Held %v", held.Err(), held.Held())
	}
	if s.Check(context.Background()) == nil {
		t.Fatal("Check passed with Redis paused")
	}
	srv.Unpause(t)
	waitFor(t, func() bool { return s.Check(context.Background()) == nil })
	l, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	_ = l.Release(context.Background())
	_ = held.Release(context.Background())
	waitFor(t, func() bool { return state(t, s).Holders == 0 })
}

// SCRIPT FLUSH under load: Script.Run reloads the scripts, no call fails.
func TestScriptFlushUnderLoad(t *testing.T) {
	srv := redistest.NewIsolated(t)
	rdb := srv.Client(t)
	s := newSem(t, rdb, redistest.Budget(t), Options{Size: 2, Rate: limiter.Limit{Rate: 1000, Burst: 10, Period: time.Second}})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				l, err := s.Acquire(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				ok.Add(1)
				if err := l.Release(context.Background()); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 20 {
		if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		before := ok.Load()
		waitFor(t, func() bool { return ok.Load() > before+5 })
	}
	close(stop)
	wg.Wait()
}

// The same scripts on a real 3-master cluster: no CROSSSLOT, the bound holds,
// FIFO holds, for budgets that land on different masters.
func TestCluster(t *testing.T) {
	cl := redistest.NewCluster(t)
	rdb := cl.Client(t)
	v := &vendor{}
	vs := httptest.NewServer(v)
	defer vs.Close()
	for i := range 3 {
		budget := fmt.Sprintf("%s-%d", redistest.Budget(t), i)
		grants := admitLoad(t, rdb, budget, vs.URL, 6, 6)
		if len(grants) == 0 {
			t.Fatal("no grants")
		}
		if m := invariant.MaxInWindow(grants, 0); m > admitLimit.Burst {
			t.Errorf("burst %d > %d", m, admitLimit.Burst)
		}
		checkClean(t, rdb, budget)
		t.Run(fmt.Sprintf("fifo-%d", i), func(t *testing.T) { testFIFO(t, rdb, budget) })
	}
	if m := v.maxInFlight.Load(); m > admitSize {
		t.Errorf("vendor saw %d in flight", m)
	}
}

// recorder captures every argument sent to a script.
type recorder struct {
	redis.UniversalClient
	mu   sync.Mutex
	args []any
}

func (r *recorder) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *redis.Cmd {
	r.mu.Lock()
	r.args = append(r.args, args...)
	r.mu.Unlock()
	return r.UniversalClient.EvalSha(ctx, sha, keys, args...)
}

// A replica's clock cannot change a decision: nothing a replica sends to the
// scripts is a point in time, only durations (TTLs, intervals, the time the
// caller can still wait); every instant comes from Redis's TIME.
func TestNoClientTimeReachesTheScripts(t *testing.T) {
	rec := &recorder{UniversalClient: redistest.New(t).Client(t)}
	s := newSem(t, rec, redistest.Budget(t), Options{Size: 1, Rate: limiter.Limit{Rate: 10, Burst: 1, Period: time.Second}, LeaseTTL: MinLeaseTTL, WaiterTTL: MinWaiterTTL})
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	l, err := s.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(MinLeaseTTL); _ = l.Release(ctx) }()
	l2, err := s.Acquire(ctx) // waits: queued, renewed, woken
	if err != nil {
		t.Fatal(err)
	}
	_ = l2.Release(ctx)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.args) == 0 {
		t.Fatal("no script calls recorded")
	}
	yearUS := int64(365 * 24 * time.Hour / time.Microsecond)
	for _, a := range rec.args {
		var n int64
		switch v := a.(type) {
		case int64:
			n = v
		case int:
			n = int64(v)
		default:
			continue
		}
		if n > yearUS {
			t.Errorf("script argument %d looks like a point in time", n)
		}
	}
}
