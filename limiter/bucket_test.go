package limiter

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/invariant"
	"github.com/sluicehq/sluice/internal/multiproc"
	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func newBucket(t testing.TB, rdb redis.Scripter, budget string, lim Limit) *Bucket {
	t.Helper()
	b, err := NewBucket(rdb, budget, lim)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Reservations are served in order: once the burst is used, each gets the
// slot one interval after the one before, and is told to wait for it.
func TestReserveOrderAndBurst(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	lim := Limit{Rate: 1, Burst: 3, Period: time.Second}
	b := newBucket(t, rdb, redistest.Budget(t), lim)
	ctx := context.Background()
	var rs []*Reservation
	var delays []time.Duration
	for range 6 {
		r, err := b.Reserve(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
		delays = append(delays, r.Delay())
	}
	for i := range 3 {
		if delays[i] != 0 {
			t.Fatalf("reservation %d within the burst waits %s", i, delays[i])
		}
	}
	for i := 3; i < 6; i++ {
		// The i-th reservation may act (i-2) intervals after the first,
		// less the time that passed since (generous: a busy machine).
		want := time.Duration(i-2) * lim.Interval()
		if got := time.Duration(rs[i].tat-rs[i-1].tat) * time.Microsecond; got != lim.Interval() {
			t.Fatalf("reservation %d is %s after the one before, want %s", i, got, lim.Interval())
		}
		if delays[i] > want || delays[i] < want-lim.Interval()/2 || !rs[i].TimeToAct().After(rs[i-1].TimeToAct()) {
			t.Fatalf("delays %v: reservation %d should wait about %s", delays, i, want)
		}
	}
	// Delay counts down to the slot.
	if d := rs[5].Delay(); d >= delays[5] {
		t.Fatalf("Delay went from %s to %s: it does not count down", delays[5], d)
	}
}

// A reservation whose slot is later than the caller can wait fails at once
// and takes nothing; a cost above the burst is refused.
func TestReserveQueueTimeoutConsumesNothing(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	b := newBucket(t, rdb, budget, Limit{Rate: 1, Burst: 1, Period: time.Hour})
	ctx := context.Background()
	if _, err := b.Reserve(ctx, 1); err != nil {
		t.Fatal(err)
	}
	before, _ := rdb.Get(ctx, redisstate.For(budget).Bucket).Result()
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err := b.Reserve(rctx, 1)
	if !errors.Is(err, ErrQueueTimeout) || errors.Is(err, context.DeadlineExceeded) || rctx.Err() != nil {
		t.Fatalf("got %v (ctx %v), want ErrQueueTimeout at once", err, rctx.Err())
	}
	after, _ := rdb.Get(ctx, redisstate.For(budget).Bucket).Result()
	if before != after {
		t.Fatalf("a refused reservation changed the bucket: %s -> %s", before, after)
	}
	if _, err := b.Reserve(ctx, 2); !errors.Is(err, ErrCostExceedsBurst) {
		t.Fatalf("got %v, want ErrCostExceedsBurst", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := b.Wait(wctx); !errors.Is(err, ErrQueueTimeout) || wctx.Err() != nil {
		t.Fatalf("Wait: got %v (ctx %v), want ErrQueueTimeout before the deadline", err, wctx.Err())
	}
}

// Only the latest reservation is given back: giving back an earlier one would
// let a new caller share a later reservation's slot.
func TestCancelGivesBackOnlyTheLatest(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	b := newBucket(t, rdb, redistest.Budget(t), Limit{Rate: 1, Burst: 1, Period: time.Hour})
	ctx := context.Background()
	first, _ := b.Reserve(ctx, 1)
	second, err := b.Reserve(ctx, 1)
	if err != nil || first == nil {
		t.Fatal(err)
	}
	third, _ := b.Reserve(ctx, 1)
	if ok, err := second.Cancel(ctx); ok || err != nil {
		t.Fatalf("cancel of a middle reservation: gave back %v, %v", ok, err)
	}
	if ok, err := third.Cancel(ctx); !ok || err != nil {
		t.Fatalf("cancel of the latest reservation: gave back %v, %v", ok, err)
	}
	if ok, _ := third.Cancel(ctx); ok {
		t.Fatal("second cancel gave back again")
	}
	// The slot of the third is free again: the next one gets it.
	next, _ := b.Reserve(ctx, 1)
	if d := next.Delay(); d < 2*time.Hour-time.Minute || d > 2*time.Hour {
		t.Fatalf("next reservation waits %s, want the third's slot (2h)", d)
	}
}

// The bucket's central promise, checked on the slot times Redis hands out
// (Redis clock) under many goroutines in several processes with random
// cancellations: no window of length W holds more than Burst + Rate*W grants.
func TestNoWindowExceedsBurstPlusRate(t *testing.T) {
	srv := redistest.New(t)
	rdb := srv.Client(t)
	budget := redistest.Budget(t)
	lim := Limit{Rate: 50, Burst: 5, Period: time.Second}
	const procs, perProc = 2, 60
	children := make([]*multiproc.Child, procs)
	for i := range children {
		children[i] = multiproc.Start(t, "TestChildBucket", "bucket",
			"REDIS_ADDR="+srv.Addr(), "BUDGET="+budget, "N="+strconv.Itoa(perProc))
	}
	slotsCh := make(chan []int64, procs+1)
	go func() { slotsCh <- reserveUnderLoad(t, rdb, budget, lim, perProc) }()
	for _, c := range children {
		slotsCh <- c.ExpectInts(t, "SLOTS")
	}
	var all []int64
	for range procs + 1 {
		all = append(all, <-slotsCh...)
	}
	if len(all) < perProc {
		t.Fatalf("only %d grants", len(all))
	}
	for _, w := range []time.Duration{0, 20 * time.Millisecond, 100 * time.Millisecond, time.Second} {
		limit := lim.Burst + int(float64(lim.Rate)*w.Seconds()/lim.Period.Seconds())
		if got := invariant.MaxInWindow(all, w.Microseconds()); got > limit {
			t.Errorf("window %s: %d grants > burst + rate*W = %d", w, got, limit)
		}
	}
	if keys, err := redistest.KeysWithoutTTL(context.Background(), rdb, redisstate.Prefix(budget)+"*"); err != nil || len(keys) > 0 {
		t.Fatalf("keys without TTL: %v %v", keys, err)
	}
}

// reserveUnderLoad runs 8 goroutines that Wait for n tokens in all, a
// quarter of them cancelled at a random moment, and returns the Redis-clock
// slot times (microseconds) of the waits that were not cancelled... and of
// the cancelled ones whose tokens were not given back, since those slots
// count too.
func reserveUnderLoad(t testing.TB, rdb redis.Scripter, budget string, lim Limit, n int) []int64 {
	b := newBucket(t, rdb, budget, lim)
	var mu sync.Mutex
	var slots []int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n; i += 8 {
				r, err := b.Reserve(context.Background(), 1)
				if err != nil {
					t.Error(err)
					return
				}
				slot := r.tat - int64(lim.Burst)*b.interval
				if rand.IntN(4) == 0 {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(50))*time.Millisecond)
					<-ctx.Done()
					cancel()
					if ok, err := r.Cancel(ctx); err != nil || ok {
						continue // given back: the slot was never used
					}
				} else {
					time.Sleep(time.Until(r.TimeToAct()))
				}
				mu.Lock()
				slots = append(slots, slot)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return slots
}

func TestChildBucket(t *testing.T) {
	if multiproc.Role() != "bucket" {
		t.Skip("entry point of child processes")
	}
	rdb := redis.NewClient(&redis.Options{Addr: multiproc.Env(t, "REDIS_ADDR")})
	defer rdb.Close()
	n, _ := strconv.Atoi(multiproc.Env(t, "N"))
	slots := reserveUnderLoad(t, rdb, multiproc.Env(t, "BUDGET"), Limit{Rate: 50, Burst: 5, Period: time.Second}, n)
	multiproc.PrintInts("SLOTS", slots)
}

// Callers act no earlier than the slots Redis gave them, however long their
// calls took to reach Redis: 4 callers whose scripts wait behind a CLIENT
// PAUSE must still act an interval apart, measured at the callers' act
// times against the limit (burst 1: at most one act in any window shorter
// than the interval).
func TestWaitActsNoEarlierThanItsSlot(t *testing.T) {
	srv := redistest.NewIsolated(t)
	rdb := srv.Client(t)
	lim := Limit{Rate: 5, Burst: 1, Period: time.Second} // a slot every 200ms
	b := newBucket(t, rdb, redistest.Budget(t), lim)
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil { // connect before the pause
		t.Fatal(err)
	}
	const callers, pause = 4, 700 * time.Millisecond
	if err := rdb.Do(ctx, "CLIENT", "PAUSE", pause.Milliseconds()).Err(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	acts := make([]time.Duration, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			if err := b.Wait(ctx); err != nil {
				t.Error(err)
			}
			acts[i] = time.Since(paused)
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if first := slices.Min(acts); first < pause/2 {
		t.Fatalf("a caller acted %v after the pause began: its call did not wait behind it", first)
	}
	// Redis gave the 4 slots one interval apart after the pause; whatever the
	// callers' calls spent waiting on Redis must not be subtracted from them.
	w := lim.Interval() / 2
	if got := invariant.MaxInWindow(acts, w); got > lim.Burst {
		t.Fatalf("%d callers acted within %s (acts at %v after the pause began); at most %d may", got, w, acts, lim.Burst)
	}
	t.Logf("acts at %v after a %s pause", acts, pause)
}

// Errors say what happened: Redis down is ErrUnavailable (with
// ErrQueueTimeout too when it did not answer before the deadline), a
// deadline cut short is ErrQueueTimeout matching context.DeadlineExceeded,
// a cancelled wait is ctx's error and gives its tokens back.
func TestBucketErrors(t *testing.T) {
	lim := Limit{Rate: 1, Burst: 1, Period: time.Hour}
	ctx := context.Background()

	t.Run("unreachable", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
		defer rdb.Close()
		b := newBucket(t, rdb, "down", lim)
		err := b.Wait(ctx)
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrQueueTimeout) {
			t.Fatalf("got %v, want ErrUnavailable only", err)
		}
	})

	t.Run("paused", func(t *testing.T) {
		srv := redistest.NewIsolated(t)
		opt, _ := redis.ParseURL(srv.URL())
		opt.ContextTimeoutEnabled, opt.MaxRetries = true, -1
		rdb := redis.NewClient(opt)
		defer rdb.Close()
		b := newBucket(t, rdb, redistest.Budget(t), lim)
		if err := rdb.Do(ctx, "CLIENT", "PAUSE", 2000).Err(); err != nil {
			t.Fatal(err)
		}
		defer srv.Client(t).Do(ctx, "CLIENT", "UNPAUSE")
		for _, tc := range []struct {
			timeout     time.Duration
			unavailable bool
		}{{20 * time.Millisecond, false}, {400 * time.Millisecond, true}} {
			wctx, cancel := context.WithTimeout(ctx, tc.timeout)
			err := b.Wait(wctx)
			cancel()
			if !errors.Is(err, ErrQueueTimeout) || errors.Is(err, ErrUnavailable) != tc.unavailable {
				t.Fatalf("deadline %s: got %v; want ErrQueueTimeout, ErrUnavailable %v", tc.timeout, err, tc.unavailable)
			}
			if !tc.unavailable && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("deadline %s: got %v; want it to match context.DeadlineExceeded", tc.timeout, err)
			}
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		rdb := redistest.New(t).Client(t)
		budget := redistest.Budget(t)
		b := newBucket(t, rdb, budget, lim)
		if err := b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		before, _ := rdb.Get(ctx, redisstate.For(budget).Bucket).Result()
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- b.Wait(wctx) }()
		// Cancel once the wait holds its reservation (the bucket moved).
		for {
			if now, _ := rdb.Get(ctx, redisstate.For(budget).Bucket).Result(); now != before {
				break
			}
			select {
			case err := <-done:
				t.Fatalf("Wait returned %v before cancellation", err)
			case <-time.After(time.Millisecond):
			}
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) || errors.Is(err, ErrQueueTimeout) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if after, _ := rdb.Get(ctx, redisstate.For(budget).Bucket).Result(); after != before {
			t.Fatalf("the cancelled wait kept its tokens: %s -> %s", before, after)
		}
	})
}
