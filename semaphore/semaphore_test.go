package semaphore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/limiter"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func newSem(t testing.TB, rdb redis.UniversalClient, budget string, opt Options) *Semaphore {
	t.Helper()
	s, err := New(rdb, budget, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func state(t testing.TB, s *Semaphore) State {
	t.Helper()
	st, err := s.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestAcquireTryRelease(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	s := newSem(t, rdb, redistest.Budget(t), Options{Size: 2})
	ctx := context.Background()
	a, err := s.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryAcquire(ctx); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("third TryAcquire: got %v, want ErrNotAcquired", err)
	}
	if !a.Held() || !b.Held() {
		t.Fatal("fresh leases not held")
	}
	if st := state(t, s); st.Holders != 2 || st.Waiters != 0 {
		t.Fatalf("state %+v, want 2 holders", st)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if a.Held() || !errors.Is(a.Err(), ErrReleased) || !errors.Is(context.Cause(a.Context()), ErrReleased) {
		t.Fatalf("released lease: Held %v, Err %v", a.Held(), a.Err())
	}
	c, err := s.TryAcquire(ctx)
	if err != nil {
		t.Fatalf("TryAcquire after release: %v", err)
	}
	// Release is shielded: a cancelled context still releases.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, l := range []*Lease{b, c} {
		if err := l.Release(cancelled); err != nil {
			t.Fatal(err)
		}
	}
	if st := state(t, s); st.Holders != 0 {
		t.Fatalf("after releases: %+v", st)
	}
}

func TestAcquireWaitsForRelease(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	s1 := newSem(t, rdb, budget, Options{Size: 1})
	s2 := newSem(t, rdb, budget, Options{Size: 1}) // another "replica"
	ctx := context.Background()
	held, err := s1.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Lease)
	go func() {
		l, err := s2.Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	waitFor(t, func() bool { return state(t, s1).Waiters == 1 })
	select {
	case <-got:
		t.Fatal("acquired while the only slot was held")
	default:
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l := <-got
	if l == nil || !l.Held() {
		t.Fatal("waiter did not get the slot")
	}
	_ = l.Release(ctx)
}

func TestQueueTimeoutLeavesNothing(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	s := newSem(t, rdb, redistest.Budget(t), Options{Size: 1})
	held, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = s.Acquire(ctx)
	if !errors.Is(err, ErrQueueTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrQueueTimeout and DeadlineExceeded", err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, func() bool { return state(t, s).Waiters == 1 })
		ccancel()
	}()
	if _, err = s.Acquire(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	// Withdrawing runs in the background: wait for it.
	waitFor(t, func() bool { st := state(t, s); return st.Holders == 1 && st.Waiters == 0 })
	_ = held.Release(context.Background())
}

// With a rate, a deadline the next token cannot meet fails at once: before
// the deadline, taking nothing.
func TestRateQueueTimeoutFailsFast(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	s := newSem(t, rdb, budget, Options{Size: 5, Rate: limiter.Limit{Rate: 1, Burst: 1, Period: time.Hour}})
	first, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = s.Acquire(ctx)
	if !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("got %v, want ErrQueueTimeout", err)
	}
	if ctx.Err() != nil {
		t.Fatal("waited out the deadline although it was known to be missed")
	}
	if st := state(t, s); st.Holders != 1 || st.Waiters != 0 {
		t.Fatalf("state %+v", st)
	}
	_ = first.Release(context.Background())
}

// A lease removed from Redis behind the holder's back (expired, or lost in
// a Redis restart) is reported lost through its context at the next renewal,
// and renewal does not bring it back.
func TestLostLeaseCancelsContextAndIsNotResurrected(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	s := newSem(t, rdb, budget, Options{Size: 1, LeaseTTL: MinLeaseTTL, WaiterTTL: 100 * time.Millisecond})
	l, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZRem(context.Background(), s.st.Keys.Leases, l.ID()).Err(); err != nil {
		t.Fatal(err)
	}
	<-l.Context().Done()
	if !errors.Is(l.Err(), ErrLeaseLost) || l.Held() {
		t.Fatalf("Err %v, Held %v", l.Err(), l.Held())
	}
	if n, _ := rdb.ZCard(context.Background(), s.st.Keys.Leases).Result(); n != 0 {
		t.Fatalf("lost lease resurrected: %d holders", n)
	}
}

// Leases renew themselves on their own schedule: held for many TTLs, still
// held, even with the shortest TTL and a waiter TTL far longer (renewals do
// not wait for the waiters' heartbeat).
func TestLeaseRenews(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	s := newSem(t, rdb, redistest.Budget(t), Options{Size: 1, LeaseTTL: MinLeaseTTL, WaiterTTL: time.Minute})
	l, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(10 * MinLeaseTTL)
	select {
	case <-l.Context().Done():
		t.Fatalf("lease ended while held: %v", l.Err())
	case <-timer.C:
	}
	if _, err := s.TryAcquire(context.Background()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("slot of a renewed lease was free: %v", err)
	}
	_ = l.Release(context.Background())
}

// Many goroutines on several Semaphore values ("replicas"), random
// cancellations (while queued, and while an acquire is in flight): never
// more than Size holders, nothing left behind.
func TestNeverMoreThanSize(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	const size, replicas, workers, rounds = 3, 3, 24, 15
	sems := make([]*Semaphore, replicas)
	for i := range sems {
		// TTLs far longer than the test: a waiter or lease left behind by
		// a cancellation would still be there at the end.
		sems[i] = newSem(t, rdb, budget, Options{Size: size, LeaseTTL: time.Minute, WaiterTTL: time.Minute})
	}
	var inUse, maxInUse, granted atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := sems[w%replicas]
			for r := range rounds {
				ctx, cancel := context.WithCancel(context.Background())
				if (w+r)%4 == 0 {
					go cancel() // a client that goes away at a random moment
				}
				l, err := s.Acquire(ctx)
				if err != nil {
					cancel()
					if !errors.Is(err, context.Canceled) {
						t.Error(err)
					}
					continue
				}
				n := inUse.Add(1)
				for m := maxInUse.Load(); n > m && !maxInUse.CompareAndSwap(m, n); m = maxInUse.Load() {
				}
				granted.Add(1)
				time.Sleep(time.Millisecond) // the guarded work
				inUse.Add(-1)
				if err := l.Release(ctx); err != nil {
					t.Error(err)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if m := maxInUse.Load(); m > size {
		t.Fatalf("max holders %d > size %d", m, size)
	}
	if granted.Load() == 0 {
		t.Fatal("nothing granted")
	}
	waitFor(t, func() bool { st := state(t, sems[0]); return st.Holders == 0 && st.Waiters == 0 })
	t.Logf("granted %d, max holders %d", granted.Load(), maxInUse.Load())
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Nobody jumps the queue: a caller that finds a free slot still waits while
// others queued before it.
func TestNoQueueJumping(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	s := newSem(t, rdb, redistest.Budget(t), Options{Size: 1})
	ctx := context.Background()
	held, err := s.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if l, err := s.Acquire(ctx); err == nil {
			_ = l.Release(ctx)
		}
	}()
	waitFor(t, func() bool { return state(t, s).Waiters == 1 })
	// Another replica configured with room for two sees a free slot, but a
	// waiter is ahead of it: the waiter is served first, the newcomer
	// queues.
	other := s.st
	other.Size = 2
	res, err := other.Acquire(ctx, rdb, []redisstate.AcquireRequest{{ID: "newcomer.x", MaxWait: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != redisstate.Queued {
		t.Fatalf("newcomer got %+v, want to wait behind the queue", res[0])
	}
	if _, err := s.TryAcquire(ctx); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryAcquire with a queue: %v", err)
	}
	_ = s.release(ctx, "newcomer.x")
	_ = held.Release(ctx)
}

// A deadline that the clock has passed before ctx's timer fired is a queue
// timeout, never a nil error.
func TestCtxErrorNeverNil(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(time.Hour))
	defer cancel()
	if err := ctxError(ctx); !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("got %v", err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if err := ctxError(cctx); !errors.Is(err, context.Canceled) || errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("got %v", err)
	}
}

// With Redis healthy, a wait that reaches its deadline is a queue timeout,
// never reported as Redis being unavailable (the gateway answers the two
// differently).
func TestDeadlineWithHealthyRedisIsNotUnavailable(t *testing.T) {
	rdb := redistest.New(t).Client(t)
	rdb.Options().ContextTimeoutEnabled = true
	s := newSem(t, rdb, redistest.Budget(t), Options{Size: 1})
	held, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release(context.Background())
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(10+i*5)*time.Millisecond)
			defer cancel()
			_, err := s.Acquire(ctx)
			if !errors.Is(err, ErrQueueTimeout) || errors.Is(err, ErrUnavailable) {
				t.Errorf("deadline %dms: %v", 10+i*5, err)
			}
		}()
	}
	wg.Wait()
}
