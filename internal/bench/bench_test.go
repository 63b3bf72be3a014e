package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

func TestMain(m *testing.M) {
	redistest.Main(m)
	printTable(os.Stdout)
}

// goroutines are the concurrency levels of every benchmark.
var goroutines = []int{1, 16, 64}

// never is a limit no benchmark comes near: 1e6 tokens per second (one per
// microsecond, the finest Limit.Validate accepts) and a burst of 1e6, so the
// bucket is never empty and no call waits.
var never = limiter.Limit{Rate: 1_000_000, Burst: 1_000_000, Period: time.Second}

// benchServer returns the server of $REDIS_URL when set, so that figures can
// come from a redis-server on loopback (no Docker proxy in the path, which
// redistest would prefer whenever Docker answers); else the shared test
// server. Either way it must be busy with nothing else: drive reads
// server-wide command counts.
func benchServer(b *testing.B) string {
	if u := os.Getenv("REDIS_URL"); u != "" {
		serverDesc.Store("REDIS_URL " + u)
		return u
	}
	srv := redistest.New(b)
	serverDesc.Store(srv.Kind() + " " + srv.Addr())
	return srv.URL()
}

// serverDesc says which server the figures come from, for the table.
var serverDesc atomic.Value

// newClient returns a client of the server at url with the options every benchmark uses: a
// pool larger than the most goroutines, so none waits for a connection.
func newClient(tb testing.TB, url string) *redis.Client {
	tb.Helper()
	opt, err := redis.ParseURL(url)
	if err != nil {
		tb.Fatal(err)
	}
	opt.PoolSize = 128
	c := redis.NewClient(opt)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// op is one benchmarked operation. It returns the latency of its first round
// trip (Acquire, Obtain) when it makes two, else 0.
type op func(ctx context.Context) (first time.Duration, err error)

// setup prepares one kind of operation on a client, for one sub-benchmark.
type setup func(*testing.B, *redis.Client) op

// BenchmarkAdmission is the gateway's path: Acquire takes a slot and a token
// in one script, then Release.
func BenchmarkAdmission(b *testing.B) { each(b, admission) }

// BenchmarkSemaphore is Acquire + Release without a rate.
func BenchmarkSemaphore(b *testing.B) { each(b, semaphoreOnly) }

// BenchmarkBucketWait is Bucket.Wait on a bucket that never makes it wait.
func BenchmarkBucketWait(b *testing.B) { each(b, bucketWait) }

// BenchmarkRedisRateAllow is the peer of the bucket: redis_rate's Allow on
// one key, with a limit that never rejects.
func BenchmarkRedisRateAllow(b *testing.B) { each(b, redisRateAllow) }

// BenchmarkRedislock is the peer of the semaphore: redislock's Obtain +
// Release, on a new key every operation (so it never contends).
func BenchmarkRedislock(b *testing.B) { each(b, redislockObtainRelease) }

// BenchmarkPaired compares latencies at one goroutine on a machine shared
// with other work: two operations alternate, so both see the same load, and
// the ratio of their latencies is steadier than that of two separate runs.
// (With more goroutines, mixed operations queue behind each other in Redis
// and the ratio tends to 1, so throughputs are compared by the separate
// benchmarks and their server cost per operation.)
func BenchmarkPaired(b *testing.B) {
	for _, c := range []struct {
		name   string
		x, y   setup
		xFirst bool // time only x's first call (the admission itself)
	}{
		{name: "AcquireVsAllow", x: admission, y: redisRateAllow, xFirst: true},
		{name: "AdmissionVsRedislock", x: admission, y: redislockObtainRelease},
	} {
		b.Run(c.name, func(b *testing.B) {
			rdb := newClient(b, benchServer(b))
			drivePair(b, c.x(b, rdb), c.y(b, rdb), c.xFirst)
		})
	}
}

func admission(b *testing.B, rdb *redis.Client) op {
	return acquireRelease(newSemaphore(b, rdb, semaphore.Options{Size: 1 << 20, Rate: never}))
}

func semaphoreOnly(b *testing.B, rdb *redis.Client) op {
	return acquireRelease(newSemaphore(b, rdb, semaphore.Options{Size: 1 << 20}))
}

func bucketWait(b *testing.B, rdb *redis.Client) op {
	bk, err := limiter.NewBucket(rdb, redistest.Budget(b), never)
	if err != nil {
		b.Fatal(err)
	}
	return func(ctx context.Context) (time.Duration, error) { return 0, bk.Wait(ctx) }
}

func redisRateAllow(b *testing.B, rdb *redis.Client) op {
	rl := redis_rate.NewLimiter(rdb)
	key := redisstate.Prefix(redistest.Budget(b)) + "redis_rate"
	lim := redis_rate.Limit{Rate: never.Rate, Burst: never.Burst, Period: never.Period}
	return func(ctx context.Context) (time.Duration, error) {
		res, err := rl.Allow(ctx, key, lim)
		if err == nil && res.Allowed != 1 {
			err = errors.New("redis_rate: rejected")
		}
		return 0, err
	}
}

func redislockObtainRelease(b *testing.B, rdb *redis.Client) op {
	lc := redislock.New(rdb)
	prefix := redisstate.Prefix(redistest.Budget(b)) + "lock:"
	var n atomic.Int64
	return func(ctx context.Context) (time.Duration, error) {
		start := time.Now()
		l, err := lc.Obtain(ctx, prefix+strconv.FormatInt(n.Add(1), 10), 15*time.Second, nil)
		if err != nil {
			return 0, err
		}
		first := time.Since(start)
		return first, l.Release(ctx)
	}
}

func newSemaphore(b *testing.B, rdb *redis.Client, opt semaphore.Options) *semaphore.Semaphore {
	s, err := semaphore.New(rdb, redistest.Budget(b), opt)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

func acquireRelease(s *semaphore.Semaphore) op {
	return func(ctx context.Context) (time.Duration, error) {
		start := time.Now()
		l, err := s.Acquire(ctx)
		if err != nil {
			return 0, err
		}
		first := time.Since(start)
		return first, l.Release(ctx)
	}
}

// each runs f's operation at every level of goroutines, as sub-benchmarks
// named g=N.
func each(b *testing.B, f setup) {
	for _, g := range goroutines {
		b.Run("g="+strconv.Itoa(g), func(b *testing.B) {
			rdb := newClient(b, benchServer(b))
			drive(b, rdb, g, f(b, rdb))
		})
	}
}

// drive runs b.N operations on exactly g goroutines, which take operations
// from one counter, and reports throughput, latency percentiles and what each
// operation costs Redis: script calls, commands (also those run by scripts),
// script time and server CPU time.
func drive(b *testing.B, rdb *redis.Client, g int, f op) {
	ctx := context.Background()
	// Warm up: open g connections, load the scripts.
	run(b, g, g, func(int) error { _, err := f(ctx); return err })
	before := snapshot(b, rdb)

	lat := make([][]time.Duration, g)
	firsts := make([][]time.Duration, g)
	for i := range g {
		lat[i] = make([]time.Duration, 0, b.N/g+1)
		firsts[i] = make([]time.Duration, 0, b.N/g+1)
	}
	b.ResetTimer()
	start := time.Now()
	run(b, g, b.N, func(w int) error {
		t0 := time.Now()
		first, err := f(ctx)
		lat[w] = append(lat[w], time.Since(t0))
		if first > 0 {
			firsts[w] = append(firsts[w], first)
		}
		return err
	})
	elapsed := time.Since(start)
	b.StopTimer()
	srv := snapshot(b, rdb).sub(before)

	n := float64(b.N)
	r := result{
		name:       b.Name(),
		goroutines: g,
		opsPerSec:  n / elapsed.Seconds(),
		p50:        percentile(slices.Concat(lat...), 0.50),
		p99:        percentile(slices.Concat(lat...), 0.99),
		firstP50:   percentile(slices.Concat(firsts...), 0.50),
		firstP99:   percentile(slices.Concat(firsts...), 0.99),
		scripts:    float64(srv.scripts) / n,
		commands:   float64(srv.commands) / n,
		scriptTime: us(srv.scriptTime) / n,
		serverCPU:  us(srv.cpu) / n,
	}
	b.ReportMetric(r.opsPerSec, "ops/s")
	b.ReportMetric(us(r.p50), "p50-µs")
	b.ReportMetric(us(r.p99), "p99-µs")
	if r.firstP50 > 0 {
		b.ReportMetric(us(r.firstP50), "first-p50-µs")
		b.ReportMetric(us(r.firstP99), "first-p99-µs")
	}
	b.ReportMetric(r.scripts, "evalsha/op")
	b.ReportMetric(r.commands, "cmds/op")
	b.ReportMetric(r.scriptTime, "script-µs/op")
	b.ReportMetric(r.serverCPU, "srv-cpu-µs/op")
	record(r)
}

// drivePair runs x and y b.N times each on one goroutine, alternating which
// goes first, and reports the latency of each and their ratios. With xFirst,
// x's latency is that of its first call only.
func drivePair(b *testing.B, x, y op, xFirst bool) {
	ctx := context.Background()
	timed := func(f op, firstOnly bool) time.Duration {
		t0 := time.Now()
		first, err := f(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if firstOnly {
			return first
		}
		return time.Since(t0)
	}
	timed(x, xFirst) // warm up: connections, scripts
	timed(y, false)
	xs := make([]time.Duration, 0, b.N)
	ys := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			xs = append(xs, timed(x, xFirst))
			ys = append(ys, timed(y, false))
		} else {
			ys = append(ys, timed(y, false))
			xs = append(xs, timed(x, xFirst))
		}
	}
	b.StopTimer()
	r := pairResult{
		name:      strings.TrimPrefix(b.Name(), "BenchmarkPaired/"),
		xP50:      percentile(xs, 0.50),
		yP50:      percentile(ys, 0.50),
		meanRatio: float64(mean(xs)) / float64(mean(ys)),
	}
	r.p50Ratio = float64(r.xP50) / float64(r.yP50)
	b.ReportMetric(us(r.xP50), "x-p50-µs")
	b.ReportMetric(us(r.yP50), "y-p50-µs")
	b.ReportMetric(r.p50Ratio, "x/y-p50")
	b.ReportMetric(r.meanRatio, "x/y-mean")
	results.mu.Lock()
	defer results.mu.Unlock()
	results.pairs = append(results.pairs, r)
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	return sum / time.Duration(max(len(d), 1))
}

// serverStats are the counters of a Redis server that drive reports per
// operation.
type serverStats struct {
	scripts    int64         // EVALSHA and EVAL calls
	commands   int64         // every command, including those run by scripts
	scriptTime time.Duration // time spent running scripts (commandstats usec)
	cpu        time.Duration // CPU time of the server (user + system)
}

func (s serverStats) sub(o serverStats) serverStats {
	return serverStats{s.scripts - o.scripts, s.commands - o.commands, s.scriptTime - o.scriptTime, s.cpu - o.cpu}
}

// snapshot reads INFO commandstats and cpu. The counts are server-wide, so
// nothing else may use the server during a benchmark.
func snapshot(b *testing.B, rdb *redis.Client) serverStats {
	info, err := rdb.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var s serverStats
	for line := range strings.Lines(info) {
		name, value, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch name {
		case "used_cpu_user", "used_cpu_sys":
			sec, err := strconv.ParseFloat(value, 64)
			if err != nil {
				b.Fatalf("INFO cpu: %q: %v", line, err)
			}
			s.cpu += time.Duration(sec * float64(time.Second))
			continue
		case "cmdstat_info":
			continue
		}
		if !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		// cmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75,...
		var calls, usec int64
		for f := range strings.SplitSeq(value, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "calls":
				calls, err = strconv.ParseInt(v, 10, 64)
			case "usec":
				usec, err = strconv.ParseInt(v, 10, 64)
			}
			if err != nil {
				b.Fatalf("INFO commandstats: %q: %v", line, err)
			}
		}
		s.commands += calls
		if name == "cmdstat_evalsha" || name == "cmdstat_eval" {
			s.scripts += calls
			s.scriptTime += time.Duration(usec) * time.Microsecond
		}
	}
	return s
}

// run calls f n times on exactly g goroutines (f gets the goroutine's index)
// and fails b on the first error.
func run(b *testing.B, g, n int, f func(w int) error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	for w := range g {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := f(w); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		b.Fatal(*err)
	}
}

// percentile returns the nearest-rank q-quantile of d (which it sorts), or 0.
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[max(int(math.Ceil(q*float64(len(d))))-1, 0)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// result is one sub-benchmark's figures, for the table.
type result struct {
	name                         string
	goroutines                   int
	opsPerSec                    float64
	p50, p99, firstP50, firstP99 time.Duration
	scripts, commands            float64
	scriptTime, serverCPU        float64 // µs
}

var results struct {
	mu    sync.Mutex
	order []string
	last  map[string]result // the final (longest) round of each sub-benchmark
	pairs []pairResult      // every round of BenchmarkPaired, in order
}

// pairResult is one round of BenchmarkPaired.
type pairResult struct {
	name                string
	xP50, yP50          time.Duration
	p50Ratio, meanRatio float64
}

func record(r result) {
	results.mu.Lock()
	defer results.mu.Unlock()
	if results.last == nil {
		results.last = map[string]result{}
	}
	if _, ok := results.last[r.name]; !ok {
		results.order = append(results.order, r.name)
	}
	results.last[r.name] = r
}

// printTable writes the figures of the benchmarks that ran as a markdown
// table, for the README; nothing if none ran.
func printTable(w io.Writer) {
	results.mu.Lock()
	defer results.mu.Unlock()
	if len(results.order) == 0 && len(results.pairs) == 0 {
		return
	}
	fmt.Fprintf(w, "\nRedis: %v, GOMAXPROCS %d\n", serverDesc.Load(), runtime.GOMAXPROCS(0))
	printPairs(w)
	if len(results.order) == 0 {
		return
	}
	fmt.Fprintln(w, "\n| benchmark | goroutines | ops/s | p50 | p99 | 1st call p50 | 1st call p99 | EVALSHA/op | Redis cmds/op | script time/op | Redis CPU/op |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, name := range results.order {
		r := results.last[name]
		first50, first99 := "", ""
		if r.firstP50 > 0 {
			first50, first99 = fmtDur(r.firstP50), fmtDur(r.firstP99)
		}
		bench := strings.TrimPrefix(name[:strings.LastIndex(name, "/")], "Benchmark")
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %s | %s | %.2f | %.1f | %.1fµs | %.0fµs |\n",
			bench, r.goroutines, r.opsPerSec, fmtDur(r.p50), fmtDur(r.p99), first50, first99, r.scripts, r.commands, r.scriptTime, r.serverCPU)
	}
}

// printPairs writes the final round of each BenchmarkPaired sub-benchmark.
func printPairs(w io.Writer) {
	if len(results.pairs) == 0 {
		return
	}
	fmt.Fprintln(w, "\n| one goroutine, alternating (x vs y) | x p50 | y p50 | x/y p50 | x/y mean |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: |")
	for i, r := range results.pairs {
		if i+1 < len(results.pairs) && results.pairs[i+1].name == r.name {
			continue // an earlier, shorter round
		}
		fmt.Fprintf(w, "| %s | %s | %s | %.2f | %.2f |\n", r.name, fmtDur(r.xP50), fmtDur(r.yP50), r.p50Ratio, r.meanRatio)
	}
}

func fmtDur(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// TestCommandsPerAdmission measures what contention costs Redis: 200 waiters
// on 3 replicas (Semaphore values with clients of their own) queue for 3
// slots, each holder working ~1ms. Waiters are woken by pub/sub, not by
// polling, so the script calls per admitted call stay a small constant; a
// regression to polling multiplies them.
func TestCommandsPerAdmission(t *testing.T) {
	srv := redistest.NewIsolated(t) // commandstats are server-wide
	budget := redistest.Budget(t)
	const replicas, waiters, rounds, size = 3, 200, 3, 3
	sems := make([]*semaphore.Semaphore, replicas)
	for i := range sems {
		s, err := semaphore.New(newClient(t, srv.URL()), budget, semaphore.Options{Size: size})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		sems[i] = s
	}
	rdb := newClient(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := redistest.ResetStats(ctx, rdb); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var admitted, inUse, maxInUse atomic.Int64
	var wg sync.WaitGroup
	for w := range waiters {
		wg.Go(func() {
			for range rounds {
				l, err := sems[w%replicas].Acquire(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				admitted.Add(1)
				n := inUse.Add(1)
				for m := maxInUse.Load(); n > m && !maxInUse.CompareAndSwap(m, n); m = maxInUse.Load() {
				}
				time.Sleep(time.Millisecond)
				inUse.Add(-1)
				if err := l.Release(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stats, err := redistest.CommandStats(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	n := admitted.Load()
	if n != waiters*rounds || maxInUse.Load() > size {
		t.Fatalf("admitted %d of %d, max holders %d of %d", n, waiters*rounds, maxInUse.Load(), size)
	}
	var all int64
	for name, c := range stats {
		if name != "info" && name != "config|resetstat" {
			all += c
		}
	}
	perCall := float64(stats["evalsha"]+stats["eval"]) / float64(n)
	t.Logf("%d admissions in %v: %.2f script calls (EVALSHA+EVAL, incl. release and keepalive), %.2f PUBLISH, %.1f Redis commands incl. those inside scripts, per admitted call",
		n, elapsed.Round(time.Millisecond), perCall, float64(stats["publish"])/float64(n), float64(all)/float64(n))
	if perCall >= 10 {
		t.Errorf("%.2f script calls per admitted call, want < 10: are waiters polling?", perCall)
	}
}
