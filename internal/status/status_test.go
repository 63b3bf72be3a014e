package status_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/internal/status"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// load holds leases of a semaphore and queues waiters, as a gateway under
// load does.
type load struct {
	t       *testing.T
	sem     *semaphore.Semaphore
	leases  []*semaphore.Lease
	waiters sync.WaitGroup
}

func newLoad(t *testing.T, rdb redis.UniversalClient, budget string, opt semaphore.Options) *load {
	t.Helper()
	sem, err := semaphore.New(rdb, budget, opt)
	if err != nil {
		t.Fatal(err)
	}
	l := &load{t: t, sem: sem}
	t.Cleanup(func() {
		_ = sem.Close() // fails the waiters with ErrClosed
		l.waiters.Wait()
	})
	return l
}

// hold acquires n leases and keeps them.
func (l *load) hold(n int) {
	l.t.Helper()
	for range n {
		lease, err := l.sem.Acquire(context.Background())
		if err != nil {
			l.t.Fatalf("acquire: %v", err)
		}
		l.leases = append(l.leases, lease)
	}
}

// releaseOne releases the oldest lease held.
func (l *load) releaseOne() {
	l.t.Helper()
	if err := l.leases[0].Release(context.Background()); err != nil {
		l.t.Fatal(err)
	}
	l.leases = l.leases[1:]
}

// queue starts n callers that wait for a slot (until the test ends) and
// returns when Redis has them all queued.
func (l *load) queue(ctx context.Context, n int) {
	l.t.Helper()
	before := l.state().Waiters
	for range n {
		l.waiters.Add(1)
		go func() {
			defer l.waiters.Done()
			lease, err := l.sem.Acquire(ctx)
			if err == nil {
				<-ctx.Done()
				_ = lease.Release(context.Background())
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for l.state().Waiters < before+int64(n) {
		if time.Now().After(deadline) {
			l.t.Fatalf("waiters not queued after 20s: %+v", l.state())
		}
		time.Sleep(5 * time.Millisecond) // polling Redis: no signal exists for "queued"
	}
}

func (l *load) state() semaphore.State {
	l.t.Helper()
	st, err := l.sem.State(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	return st
}

func newStatus(t *testing.T, rdb redis.UniversalClient, budgets []status.Budget, opt status.Options) *status.Status {
	t.Helper()
	st, err := status.New(rdb, budgets, opt)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func mustSample(t *testing.T, st *status.Status) status.BudgetStatus {
	t.Helper()
	if err := st.Sample(context.Background()); err != nil {
		t.Fatalf("sample: %v", err)
	}
	snap := st.Snapshot()
	if snap.Error != "" || !snap.Sampled {
		t.Fatalf("snapshot after a good sample: %+v", snap)
	}
	return snap.Budgets[0]
}

func last(b status.BudgetStatus) status.Point { return b.Samples[len(b.Samples)-1] }

// The sampler shows what two replicas' semaphores hold and queue in Redis,
// and the bucket's tokens as the scripts count them.
func TestSampleMatchesSemaphores(t *testing.T) {
	t.Parallel()
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	rate := limiter.Limit{Rate: 1, Burst: 4, Period: time.Minute} // no refill during the test
	opt := semaphore.Options{Size: 3, Rate: rate}
	a, b := newLoad(t, rdb, budget, opt), newLoad(t, rdb, budget, opt)
	st := newStatus(t, rdb, []status.Budget{{Name: budget, Rate: rate, Concurrency: 3}}, status.Options{})

	got := last(mustSample(t, st))
	if got.Leases != 0 || got.Queue != 0 || got.Replicas != 0 || *got.Tokens != 4 || *got.NextTokenSeconds != 0 {
		t.Fatalf("idle budget: %+v", got)
	}

	a.hold(2)
	b.hold(1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.queue(ctx, 2)
	bs := mustSample(t, st)
	got = last(bs)
	if got.Leases != 3 || got.Queue != 2 || got.Replicas != 2 || len(bs.Replicas) != 2 || *got.Tokens != 1 {
		t.Fatalf("3 leases of 2 replicas, 2 queued, 1 token left: sampled %+v, replicas %v, tokens %d", got, bs.Replicas, *got.Tokens)
	}

	// A freed slot goes to the head of the queue with the last token: the
	// next one is a minute away, as reserve.lua sees it too.
	a.releaseOne()
	got = last(mustSample(t, st))
	res, err := redisstate.For(budget).Reserve(context.Background(), rdb, redisstate.IntervalMicros(1, time.Minute), 4, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK {
		t.Fatal("reserve.lua granted a token the bucket should not have")
	}
	if got.Leases != 3 || got.Queue != 1 || *got.Tokens != 0 {
		t.Fatalf("after a release served the head: %+v", got)
	}
	if diff := *got.NextTokenSeconds - res.Wait.Seconds(); diff < -0.5 || diff > 5 {
		t.Fatalf("next token in %.3fs, reserve.lua says %s", *got.NextTokenSeconds, res.Wait)
	}
	// The scripts counted every grant: three, then the head served.
	if n, err := rdb.Get(context.Background(), redisstate.For(budget).Grants).Int(); err != nil || n != 4 {
		t.Fatalf("grant counter %d (%v), want the 4 grants", n, err)
	}
}

// The grant rate comes from the deltas of the budget's grant counter, with
// Redis's clock.
func TestGrantRateFromCounter(t *testing.T) {
	t.Parallel()
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	st := newStatus(t, rdb, []status.Budget{{Name: budget, Concurrency: 2}}, status.Options{})
	mustSample(t, st)
	key := redisstate.For(budget).Grants
	ctx := context.Background()
	for _, n := range []int64{5, 10, 0} {
		// Spacing, not synchronisation: the page's times are in whole
		// milliseconds, so 100ms keeps the rate within 2%.
		time.Sleep(100 * time.Millisecond)
		if n > 0 {
			if err := rdb.IncrBy(ctx, key, n).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if bs := mustSample(t, st); !bs.GrantsCounted {
			t.Fatal("counter not seen")
		}
	}
	bs := st.Snapshot().Budgets[0]
	p := bs.Samples
	// A missing counter is 0: the 5 grants before the first reading count.
	// Each point's rate is counted over at least a second (or from the
	// first sample): here, all from the first.
	want := []float64{5, 15, 15}
	for i, w := range want {
		g := p[i+1].GrantsPerSecond
		if g == nil {
			t.Fatalf("sample %d: no rate", i+1)
		}
		dt := float64(p[i+1].T-p[0].T) / 1000
		if *g*dt < w*0.9 || *g*dt > w*1.1 {
			t.Fatalf("sample %d: %.1f grants/s over %.3fs, want %v grants", i+1, *g, dt, w)
		}
	}
	if bs.GrantsPerSecond1m == nil || *bs.GrantsPerSecond1m <= 0 {
		t.Fatalf("rate over the history: %v", bs.GrantsPerSecond1m)
	}
	// Dropped by its TTL and counted again: not a negative rate.
	if err := rdb.Set(ctx, key, 2, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if g := last(mustSample(t, st)).GrantsPerSecond; g == nil || *g < 0 {
		t.Fatalf("after a reset: %v", g)
	}
}

// /status.json and /status show the same sample; only GET (and HEAD) are
// served; names are escaped; the page allows no other script or origin.
func TestHandler(t *testing.T) {
	t.Parallel()
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	hostile := budget + "<b>x</b>"
	ld := newLoad(t, rdb, hostile, semaphore.Options{Size: 4})
	st := newStatus(t, rdb, []status.Budget{
		{Name: hostile, Concurrency: 4},
		{Name: budget + "-rated", Rate: limiter.PerSecond(10), Concurrency: 2},
	}, status.Options{})
	ld.hold(3)
	mustSample(t, st)
	srv := httptest.NewServer(st.Handler())
	defer srv.Close()

	res, err := http.Get(srv.URL + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var snap status.Snapshot
	if err := json.NewDecoder(res.Body).Decode(&snap); err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	if len(snap.Budgets) != 2 || snap.Budgets[0].Name != hostile || last(snap.Budgets[0]).Leases != 3 ||
		snap.Budgets[0].Samples[0].Tokens != nil || *last(snap.Budgets[1]).Tokens != 10 || snap.Budgets[1].RatePerSecond != 10 {
		t.Fatalf("status.json: %+v", snap)
	}

	res, err = http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	page := string(body)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if strings.Contains(page, "<b>x</b>") || !strings.Contains(page, "&lt;b&gt;x&lt;/b&gt;") {
		t.Fatal("the budget's name is not escaped")
	}
	if !strings.Contains(page, `id="b0-leases">3<`) {
		t.Fatal("the page does not show the 3 leases held")
	}
	csp := res.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'sha256-") || strings.Contains(csp, "unsafe") {
		t.Fatalf("CSP %q", csp)
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{{"POST", "/status", 405}, {"DELETE", "/status.json", 405}, {"HEAD", "/status", 200}, {"GET", "/status/x", 404}} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		if res.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, res.StatusCode, tc.want)
		}
	}
}

// The collector's gauges are the sampler's figures; capacity, age and the
// error count are there before the first sample.
func TestCollector(t *testing.T) {
	t.Parallel()
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	rate := limiter.Limit{Rate: 1, Burst: 5, Period: time.Minute}
	ld := newLoad(t, rdb, budget, semaphore.Options{Size: 2, Rate: rate})
	st := newStatus(t, rdb, []status.Budget{{Name: budget, Rate: rate, Concurrency: 2}}, status.Options{})
	c := st.Collector()

	if n := testutil.CollectAndCount(c, "sluice_cluster_leases"); n != 0 {
		t.Fatalf("leases before any sample: %d series", n)
	}
	for _, name := range []string{"sluice_cluster_capacity", "sluice_status_sample_age_seconds", "sluice_status_sample_errors_total", "sluice_cluster_rate_per_second"} {
		if n := testutil.CollectAndCount(c, name); n != 1 {
			t.Fatalf("%s before any sample: %d series", name, n)
		}
	}

	ld.hold(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ld.queue(ctx, 1)
	mustSample(t, st) // the scripts counted the 2 grants
	want := `
# HELP sluice_cluster_capacity Slots of the budget's semaphore (the vendor's concurrency C).
# TYPE sluice_cluster_capacity gauge
sluice_cluster_capacity{budget="B"} 2
# HELP sluice_cluster_grants_total Grants of the budget, cluster-wide, as counted in Redis by the admission scripts (it restarts from 0 after a day or two without use).
# TYPE sluice_cluster_grants_total counter
sluice_cluster_grants_total{budget="B"} 2
# HELP sluice_cluster_leases Live leases (vendor calls admitted), cluster-wide, at the last sample.
# TYPE sluice_cluster_leases gauge
sluice_cluster_leases{budget="B"} 2
# HELP sluice_cluster_queue_depth Callers queued for the budget, cluster-wide, at the last sample.
# TYPE sluice_cluster_queue_depth gauge
sluice_cluster_queue_depth{budget="B"} 1
# HELP sluice_cluster_replicas Replicas alive at the last sample: with queued callers (a live heartbeat) or live leases.
# TYPE sluice_cluster_replicas gauge
sluice_cluster_replicas{budget="B"} 1
# HELP sluice_cluster_tokens_available Tokens in the budget's bucket at the last sample (budgets with a rate).
# TYPE sluice_cluster_tokens_available gauge
sluice_cluster_tokens_available{budget="B"} 3
# HELP sluice_status_sample_errors_total Samples of the cluster state that failed (Redis unreachable or too slow).
# TYPE sluice_status_sample_errors_total counter
sluice_status_sample_errors_total 0
`
	want = strings.ReplaceAll(want, `"B"`, `"`+budget+`"`)
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"sluice_cluster_capacity", "sluice_cluster_grants_total", "sluice_cluster_leases", "sluice_cluster_queue_depth",
		"sluice_cluster_replicas", "sluice_cluster_tokens_available", "sluice_status_sample_errors_total"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// While Redis does not answer, the page and the JSON keep the last good
// sample, with the error and its age; the sampler recovers by itself.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.NewIsolated(t)
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true // the sample's deadline cuts the read
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	budget := redistest.Budget(t)
	ld := newLoad(t, rdb, budget, semaphore.Options{Size: 3})
	ld.hold(2)
	st := newStatus(t, rdb, []status.Budget{{Name: budget, Concurrency: 3}}, status.Options{Interval: 100 * time.Millisecond, Timeout: 300 * time.Millisecond})
	mustSample(t, st)
	web := httptest.NewServer(st.Handler())
	defer web.Close()

	srv.Pause(t)
	paused := true
	defer func() {
		if paused {
			srv.Unpause(t)
		}
	}()
	err = st.Sample(context.Background())
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("sample of a paused Redis: %v", err)
	}
	snap := st.Snapshot()
	if snap.Error == "" || !snap.Sampled || snap.SampleErrors != 1 || snap.SampleAgeSeconds < 0.3 ||
		last(snap.Budgets[0]).Leases != 2 {
		t.Fatalf("snapshot during the outage: %+v", snap)
	}
	res, err := http.Get(web.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "no answer from Redis") ||
		!strings.Contains(string(body), `id="b0-leases">2<`) {
		t.Fatalf("page during the outage: %d\n%s", res.StatusCode, body)
	}
	if err := testutil.CollectAndCompare(st.Collector(), strings.NewReader(`
# HELP sluice_status_sample_errors_total Samples of the cluster state that failed (Redis unreachable or too slow).
# TYPE sluice_status_sample_errors_total counter
sluice_status_sample_errors_total 1
`), "sluice_status_sample_errors_total"); err != nil {
		t.Fatal(err)
	}

	srv.Unpause(t)
	paused = false
	mustSample(t, st)
	if snap := st.Snapshot(); snap.Error != "" || last(snap.Budgets[0]).Leases != 2 {
		t.Fatalf("after the outage: %+v", snap)
	}
}

// countReads counts the round trips a client makes to Redis, leaving out
// the setup of a new connection (HELLO, CLIENT ...).
type countReads struct{ n atomic.Int64 }

func (c *countReads) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name != "hello" && name != "client" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (c *countReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if cmds[0].Name() != "client" {
			c.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// Page views, JSON polls and scrapes never reach Redis; Run reads once per
// interval, in one round trip for all budgets.
func TestReadsPerInterval(t *testing.T) {
	t.Parallel()
	rdb := redistest.New(t).Client(t)
	var reads countReads
	rdb.AddHook(&reads)
	budget := redistest.Budget(t)
	st := newStatus(t, rdb, []status.Budget{
		{Name: budget + "-a", Rate: limiter.PerSecond(5), Concurrency: 2},
		{Name: budget + "-b", Concurrency: 8},
	}, status.Options{Interval: 200 * time.Millisecond})
	web := httptest.NewServer(st.Handler())
	defer web.Close()

	ctx, cancel := context.WithCancel(context.Background())
	began := time.Now()
	done := make(chan struct{})
	go func() { defer close(done); _ = st.Run(ctx) }()
	for range 30 {
		for _, path := range []string{"/status", "/status.json"} {
			res, err := http.Get(web.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			_ = res.Body.Close()
		}
		testutil.CollectAndCount(st.Collector())
	}
	for !st.Snapshot().Sampled { // the first sample is taken at once
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	elapsed := time.Since(began)
	if n, most := reads.n.Load(), int64(elapsed/(200*time.Millisecond))+1; n < 1 || n > most {
		t.Fatalf("%d round trips to Redis in %s with a 200ms interval: want 1..%d", n, elapsed, most)
	}
}

// On a Redis Cluster, one sample reads budgets on different nodes (each
// budget's keys in its own slot) and TIME from any node.
func TestSampleOnCluster(t *testing.T) {
	t.Parallel()
	rdb := redistest.NewCluster(t).Client(t)
	budget := redistest.Budget(t)
	var budgets []status.Budget
	var loads []*load
	for i := range 4 {
		name := budget + "-" + strconv.Itoa(i)
		budgets = append(budgets, status.Budget{Name: name, Rate: limiter.PerMinute(10), Concurrency: 5})
		loads = append(loads, newLoad(t, rdb, name, semaphore.Options{Size: 5, Rate: limiter.PerMinute(10)}))
	}
	for i, l := range loads {
		l.hold(i + 1)
	}
	st := newStatus(t, rdb, budgets, status.Options{})
	if err := st.Sample(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, b := range st.Snapshot().Budgets {
		if p := last(b); p.Leases != i+1 || p.Replicas != 1 || *p.Tokens != 10-(i+1) {
			t.Errorf("budget %d: %+v", i, p)
		}
	}
}
