package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/semaphore"
)

// The scale workload: C slots, many more waiters that loop acquire, hold,
// release, spread over N replicas (each its own go-redis client and hence its
// own connections and subscription), on one Redis.
const (
	scaleSlots   = 32
	scaleWaiters = 480
	scaleHold    = 50 * time.Millisecond
	scalePoll    = 5 * time.Millisecond // the polling peer's retry interval
	scaleWarmup  = 2 * time.Second      // queues fill before measuring
	scaleMeasure = 6 * time.Second      // the fixed measuring time of a row
)

var scaleReplicas = []int{1, 4, 16, 48}

// BenchmarkScale measures what an admission costs Redis as the replicas
// sharing one budget grow, beside a polling peer in the same run: C
// redislock keys that every waiter polls (one random key every 5 ms) until
// it obtains one. For each row it reports, per admission, the Redis commands
// (those run by scripts included), Redis CPU (used_cpu_user+used_cpu_sys)
// and Redis output bytes (total_net_output_bytes), from INFO deltas; the
// utilisation of the C/hold admissions per second the slots allow; and the
// p99 wait for a slot. It prints a README-ready table at the end.
//
// A row runs for a fixed time whatever b.N; run it once per row, on a Redis
// busy with nothing else (the counters are server-wide):
//
//	redis-server --port 6391 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
//	REDIS_URL=redis://127.0.0.1:6391 go test -run '^$' -bench Scale -benchtime 1x ./internal/bench/
//
// The whole run takes about 80 s.
func BenchmarkScale(b *testing.B) {
	url := benchServer(b) // skips when no Redis is available
	rows := map[string]scaleRow{}
	var order []string
	for _, n := range scaleReplicas {
		for _, peer := range []struct {
			name  string
			setup func(b *testing.B, clients []*redis.Client) acquireFunc
		}{
			{"sluice", sluiceWaiters},
			{"redislock-poll", pollingWaiters},
		} {
			name := fmt.Sprintf("replicas=%d/%s", n, peer.name)
			b.Run(name, func(b *testing.B) {
				clients := make([]*redis.Client, n)
				for i := range clients {
					clients[i] = newClient(b, url)
				}
				row := runScale(b, clients, peer.setup(b, clients))
				row.replicas, row.peer = n, peer.name
				if _, ok := rows[name]; !ok {
					order = append(order, name)
				}
				rows[name] = row
			})
		}
	}
	printScale(os.Stdout, order, rows)
}

// acquireFunc takes a slot for waiter w and returns how to give it back.
type acquireFunc func(ctx context.Context, w int) (release func(), err error)

// sluiceWaiters spreads the waiters over one semaphore per client.
func sluiceWaiters(b *testing.B, clients []*redis.Client) acquireFunc {
	budget := redistest.Budget(b)
	sems := make([]*semaphore.Semaphore, len(clients))
	for i, c := range clients {
		s, err := semaphore.New(c, budget, semaphore.Options{Size: scaleSlots})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		sems[i] = s
	}
	return func(ctx context.Context, w int) (func(), error) {
		l, err := sems[w%len(sems)].Acquire(ctx)
		if err != nil {
			return nil, err
		}
		return func() { _ = l.Release(context.Background()) }, nil
	}
}

// pollingWaiters is the peer: C redislock keys; a waiter tries one at
// random every scalePoll until it obtains one.
func pollingWaiters(b *testing.B, clients []*redis.Client) acquireFunc {
	prefix := redisstate.Prefix(redistest.Budget(b)) + "slot:"
	lockers := make([]*redislock.Client, len(clients))
	for i, c := range clients {
		lockers[i] = redislock.New(c)
	}
	return func(ctx context.Context, w int) (func(), error) {
		lc := lockers[w%len(lockers)]
		for {
			l, err := lc.Obtain(ctx, prefix+strconv.Itoa(rand.IntN(scaleSlots)), 15*time.Second, nil)
			if err == nil {
				return func() { _ = l.Release(context.Background()) }, nil
			}
			if !errors.Is(err, redislock.ErrNotObtained) {
				return nil, err
			}
			select {
			case <-time.After(scalePoll):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
}

// scaleRow is one row of the table.
type scaleRow struct {
	replicas int
	peer     string
	perSec   float64 // admissions per second
	util     float64 // of scaleSlots/scaleHold admissions per second
	commands float64 // per admission, as the rest
	cpu      time.Duration
	outBytes float64
	p99      time.Duration // wait for a slot
}

// runScale runs scaleWaiters waiters on acquire for scaleWarmup, then
// measures for scaleMeasure, and reports the row's metrics.
func runScale(b *testing.B, clients []*redis.Client, acquire acquireFunc) scaleRow {
	rdb := clients[0]
	ctx, cancel := context.WithCancel(context.Background())
	var (
		measuring atomic.Bool
		admitted  atomic.Int64
		waits     = make([][]time.Duration, scaleWaiters) // each waiter's own
		wg        sync.WaitGroup
		firstErr  atomic.Pointer[error]
	)
	for w := range scaleWaiters {
		wg.Go(func() {
			for {
				t0 := time.Now()
				release, err := acquire(ctx, w)
				if err != nil {
					if ctx.Err() == nil {
						firstErr.CompareAndSwap(nil, &err)
					}
					return
				}
				if measuring.Load() {
					admitted.Add(1)
					waits[w] = append(waits[w], time.Since(t0))
				}
				time.Sleep(scaleHold) // the guarded call
				release()
			}
		})
	}
	time.Sleep(scaleWarmup)
	before, outBefore := snapshot(b, rdb), outputBytes(b, rdb)
	measuring.Store(true)
	start := time.Now()
	time.Sleep(scaleMeasure)
	measuring.Store(false)
	elapsed := time.Since(start)
	srv, out := snapshot(b, rdb).sub(before), outputBytes(b, rdb)-outBefore
	cancel()
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		b.Fatal(*err)
	}

	n := float64(max(admitted.Load(), 1))
	row := scaleRow{
		perSec:   n / elapsed.Seconds(),
		commands: float64(srv.commands) / n,
		cpu:      time.Duration(float64(srv.cpu) / n),
		outBytes: float64(out) / n,
		p99:      percentile(slices.Concat(waits...), 0.99),
	}
	row.util = row.perSec / (scaleSlots / scaleHold.Seconds())
	b.ReportMetric(0, "ns/op") // a row runs for a fixed time, whatever b.N
	b.ReportMetric(row.perSec, "adm/s")
	b.ReportMetric(100*row.util, "util-%")
	b.ReportMetric(row.commands, "cmds/adm")
	b.ReportMetric(us(row.cpu), "cpu-µs/adm")
	b.ReportMetric(row.outBytes, "out-B/adm")
	b.ReportMetric(float64(row.p99)/float64(time.Millisecond), "p99-wait-ms")
	return row
}

// outputBytes reads the server's total_net_output_bytes (INFO stats).
func outputBytes(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_net_output_bytes:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatalf("INFO stats: %q: %v", line, err)
			}
			return n
		}
	}
	b.Fatal("INFO stats: no total_net_output_bytes")
	return 0
}

// printScale writes the rows as a markdown table.
func printScale(w io.Writer, order []string, rows map[string]scaleRow) {
	if len(order) == 0 {
		return
	}
	fmt.Fprintf(w, "\nC = %d, %d waiters, %v hold, %v measured per row; Redis: %v; per admission:\n\n",
		scaleSlots, scaleWaiters, scaleHold, scaleMeasure, serverDesc.Load())
	fmt.Fprintln(w, "| replicas | waiters | admissions/s | utilisation of C/hold | Redis commands | Redis CPU | Redis output bytes | p99 wait |")
	fmt.Fprintln(w, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, name := range order {
		r := rows[name]
		fmt.Fprintf(w, "| %d | %s | %.0f | %.0f%% | %.1f | %s | %.0f | %s |\n",
			r.replicas, r.peer, r.perSec, 100*r.util, r.commands, fmtDur(r.cpu), r.outBytes, fmtDur(r.p99))
	}
}
