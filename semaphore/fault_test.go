package semaphore_test

// Faults injected for real between a go-redis client and Redis (a proxy that
// drops replies, holds requests, black-holes a connection), each test stating
// the property it checks, observed in Redis itself.

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

// A TryAcquire whose reply is lost is retried by go-redis with the same id.
// Property: TryAcquire never says "not acquired" while Redis holds a lease
// for it (a slot lost for a whole lease TTL); whatever it answers, Redis
// agrees.
func TestFaultRetriedTryAcquireAgreesWithRedis(t *testing.T) {
	e := newFaultEnv(t)
	// Two slots and one token per hour: the first run takes the token, so a
	// retry that does not know it was granted finds no token left.
	s := e.sem(e.proxied(), semaphore.Options{Size: 2, Rate: limiter.Limit{Rate: 1, Burst: 1, Period: time.Hour}})
	lost := e.proxy.DropReply(acquireCall)
	calls := e.proxy.Count(acquireCall)

	l, err := s.TryAcquire(context.Background())
	within(t, lost.Done(), 5*time.Second, "the acquire whose reply is lost")
	t.Logf("TryAcquire: %v; acquire script calls: %d", err, calls.Load())
	if err == nil {
		if !l.Held() || !e.has(e.keys.leases, l.ID()) || e.card(e.keys.leases) != 1 {
			t.Fatalf("TryAcquire returned a lease (held %v) but Redis has %d leases", l.Held(), e.card(e.keys.leases))
		}
		if err := l.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		return
	}
	_ = s.Close() // waits for the withdrawals callers started
	if n := e.card(e.keys.leases); n != 0 {
		t.Fatalf("TryAcquire said %q while Redis holds %d lease(s) for it, until the lease TTL", err, n)
	}
}

// An Acquire whose reply is lost is granted in Redis; its retry reaches Redis
// only after later waiters queued. Properties: the holder is not re-queued
// behind them (its Acquire returns the lease it was granted, before the
// waiter ahead of it gives up); the granted id is not left in the queue;
// Held() is never true while Redis has no lease for it (no
// C+1 holders); and the next waiter is granted promptly after the release,
// not a TTL later.
func TestFaultRetriedAcquireKeepsItsGrantAndPlace(t *testing.T) {
	e := newFaultEnv(t)
	const ttl = 2 * time.Second
	opt := semaphore.Options{Size: 1, LeaseTTL: ttl}
	a := e.sem(e.proxied(), opt) // the replica whose reply is lost
	b := e.sem(e.direct, opt)    // a healthy replica with later waiters

	lost := e.proxy.DropReply(acquireCall)
	release := make(chan struct{})
	retry := e.proxy.Hold(acquireCall, release)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	aRes := acquireAsync(ctx, a)
	within(t, lost.Done(), 5*time.Second, "the acquire whose reply is lost")
	within(t, retry.Matched(), 5*time.Second, "go-redis's retry of it")
	if n := e.card(e.keys.leases); n != 1 {
		t.Fatalf("after the lost reply Redis has %d leases, want the 1 granted", n)
	}
	// A later waiter queues (with a deadline), then the retry goes on.
	bctx, bcancel := context.WithTimeout(ctx, 3*ttl/4)
	defer bcancel()
	bRes := acquireAsync(bctx, b)
	if !eventually(5*time.Second, func() bool { return e.card(e.keys.queue) == 1 }) {
		t.Fatal("the later waiter did not queue")
	}
	close(release)

	var got acquired
	select {
	case got = <-aRes:
	case r := <-bRes:
		t.Fatalf("the later waiter ended (%v) before the holder's Acquire returned: the holder was re-queued behind it", r.err)
	}
	if got.err != nil {
		t.Fatalf("Acquire of a granted slot failed: %v", got.err)
	}
	l := got.l
	if e.has(e.keys.queue, l.ID()) {
		t.Fatal("the granted id is still queued: a phantom head")
	}

	// Held must imply that Redis has the lease, through the first grant's
	// expiry and a few renewals.
	end := time.Now().Add(3 * ttl / 2)
	for time.Now().Before(end) {
		held := l.Held()
		inRedis := e.has(e.keys.leases, l.ID())
		if held && !inRedis {
			t.Fatalf("Held() is true while Redis has no lease for it (%v after the grant): C+1 holders", time.Since(got.at).Round(time.Millisecond))
		}
		if !held {
			t.Fatalf("lease lost on a healthy Redis: %v", l.Err())
		}
		time.Sleep(25 * time.Millisecond)
	}

	// The next waiter is granted promptly after the release.
	cRes := acquireAsync(ctx, b)
	if !eventually(5*time.Second, func() bool { return e.card(e.keys.queue) >= 1 }) {
		t.Fatal("the next waiter did not queue")
	}
	released := time.Now()
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-cRes:
		if r.err != nil {
			t.Fatalf("next waiter: %v", r.err)
		}
		if wait := r.at.Sub(released); wait > ttl/2 {
			t.Fatalf("next waiter granted %v after the release, want promptly (lease TTL %v)", wait.Round(time.Millisecond), ttl)
		}
		_ = r.l.Release(ctx)
	case <-time.After(ttl / 2):
		t.Fatalf("next waiter not granted within %v of the release (lease TTL %v)", ttl/2, ttl)
	}
	<-bRes // gave up long ago, at its deadline
	if !eventually(2*time.Second, func() bool { return e.card(e.keys.leases)+e.card(e.keys.queue) == 0 }) {
		t.Fatalf("left behind: %d leases, %d queued", e.card(e.keys.leases), e.card(e.keys.queue))
	}
}

// A waiter is woken (it is the head) while its replica's batcher has a call
// in flight, so its re-acquire waits in the batcher, unsent; then its
// deadline passes. Property: its queue entry does not stay behind at the
// head, so the next waiter is granted promptly once the slot is free, not
// after the waiter TTL.
func TestFaultWaiterLeavingBeforeItsRetryWasSentLeavesNoHead(t *testing.T) {
	e := newFaultEnv(t)
	const waiterTTL = 4 * time.Second // an entry left behind stalls >= 3/4 of it
	opt := semaphore.Options{Size: 1, WaiterTTL: waiterTTL}
	r1 := e.sem(e.proxied(), opt) // the leaving waiter's replica
	r2 := e.sem(e.direct, opt)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	holder, err := r2.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer wcancel()
	wRes := acquireAsync(wctx, r1) // the waiter that will leave
	if !eventually(5*time.Second, func() bool { return e.card(e.keys.queue) == 1 }) {
		t.Fatal("waiter did not queue")
	}
	yRes := acquireAsync(ctx, r2) // the next waiter
	if !eventually(5*time.Second, func() bool { return e.card(e.keys.queue) == 2 }) {
		t.Fatal("next waiter did not queue")
	}
	// A call of r1's batcher is held in flight: the waiter's re-acquire,
	// once woken, waits behind it.
	release := make(chan struct{})
	inFlight := e.proxy.Hold(acquireCall, release)
	tryRes := make(chan error, 1)
	go func() {
		l, err := r1.TryAcquire(ctx)
		if err == nil {
			_ = l.Release(ctx)
		}
		tryRes <- err
	}()
	within(t, inFlight.Matched(), 5*time.Second, "the call in flight")
	if err := holder.Release(ctx); err != nil { // wakes the waiter
		t.Fatal(err)
	}
	w := <-wRes // its deadline passed while its re-acquire was unsent
	if w.err == nil {
		_ = w.l.Release(ctx) // the batcher did not hold it back: fine too
	}
	close(release)
	<-tryRes
	left := time.Now()

	select {
	case y := <-yRes:
		if y.err != nil {
			t.Fatalf("next waiter: %v", y.err)
		}
		_ = y.l.Release(ctx)
		if wait := y.at.Sub(left); wait > 1500*time.Millisecond {
			t.Fatalf("next waiter granted %v after the waiter ahead left (waiter TTL %v): its entry stayed at the head", wait.Round(time.Millisecond), waiterTTL)
		}
	case <-time.After(1500 * time.Millisecond):
		t.Fatalf("next waiter not granted within 1.5s of the waiter ahead leaving (queue: %d, waiter TTL %v): its entry stayed at the head",
			e.card(e.keys.queue), waiterTTL)
	}
}

// An acquire is delayed on its way to Redis; the caller's deadline passes, it
// withdraws (on another connection, which overtakes the acquire), and then
// the acquire reaches Redis. Property: no phantom lease (until the lease TTL)
// and no phantom waiter at the head (until the waiter TTL), whether the slot
// was free or busy.
func TestFaultWithdrawOvertakingAcquireLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		busy bool
	}{{"free slot", false}, {"busy slot", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFaultEnv(t)
			opt := semaphore.Options{Size: 1}
			s := e.sem(e.proxied(), opt)
			ctx := context.Background()
			if tc.busy {
				l, err := e.sem(e.direct, opt).Acquire(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = l.Release(ctx) }()
			}
			release := make(chan struct{})
			delayed := e.proxy.Hold(acquireCall, release)
			withdraw := e.proxy.Watch(releaseCall)

			actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			if l, err := s.Acquire(actx); err == nil {
				t.Fatalf("Acquire held at the proxy succeeded (lease %s)", l.ID())
			}
			within(t, delayed.Matched(), time.Second, "the delayed acquire")
			within(t, withdraw.Done(), 5*time.Second, "the withdrawal, answered by Redis")
			close(release)
			within(t, delayed.Done(), 5*time.Second, "the late acquire, answered by Redis")
			// Give the semaphore a moment to undo anything the late acquire
			// did; the faults lasted a lease or waiter TTL.
			if !eventually(time.Second, func() bool { return e.card(e.keys.queue) == 0 }) {
				t.Fatalf("a phantom waiter is queued after the caller left (queue %d)", e.card(e.keys.queue))
			}
			want := int64(0)
			if tc.busy {
				want = 1
			}
			if !eventually(time.Second, func() bool { return e.card(e.keys.leases) == want }) {
				t.Fatalf("%d leases after the caller left, want %d: a phantom lease", e.card(e.keys.leases), want)
			}
		})
	}
}

// A wake-up channel whose connection dies silently (a half-open TCP: no FIN,
// no RST, as NATs and load balancers leave) loses every wake-up. Properties:
// admissions that need a wake-up keep near their normal rate (very wide
// margin: without a fix they fall to the fallback poll, ~200x slower), and
// Check reports the dead subscription while it is dead.
func TestFaultDeadSubscriptionIsNoticed(t *testing.T) {
	e := newFaultEnv(t)
	opt := semaphore.Options{Size: 1}
	r1 := e.sem(e.proxied(), opt) // its subscription will die
	r2 := e.sem(e.direct, opt)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !eventually(5*time.Second, func() bool { return subscribers(t, e) > 0 }) {
		t.Fatal("no subscription to wake-ups")
	}

	// One worker per replica, one slot: strictly alternating FIFO, so every
	// admission of r1 waits for r2's release and its wake-up.
	var admitted atomic.Int64 // r1's admissions
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i, s := range []*semaphore.Semaphore{r1, r2} {
		wg.Go(func() {
			for ctx.Err() == nil {
				l, err := s.Acquire(ctx)
				if err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				if i == 0 {
					admitted.Add(1)
				}
				time.Sleep(5 * time.Millisecond) // the guarded work
				if err := l.Release(context.Background()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	defer func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}()

	const base, window = time.Second, 6 * time.Second
	start := admitted.Load()
	time.Sleep(base) // measuring the normal rate over a fixed time
	normal := float64(admitted.Load()-start) / base.Seconds()
	if normal < 2 {
		t.Fatalf("normal rate %.1f/s: too slow to measure", normal)
	}

	// The resubscription (if any) is held until Check has reported the
	// death, so that "while it is dead" lasts.
	resubscribed := make(chan struct{})
	var closeOnce sync.Once
	unhold := func() { closeOnce.Do(func() { close(resubscribed) }) }
	defer unhold()
	for _, m := range subscribeCalls(e.budget) {
		e.proxy.Hold(m, resubscribed)
	}
	holed := 0
	for _, m := range subscribeCalls(e.budget) {
		holed += e.proxy.BlackHole(m)
	}
	if holed == 0 {
		t.Fatal("no subscription connection to black-hole")
	}
	died := time.Now()
	before := admitted.Load()

	var reported atomic.Value // the first error of Check after the death
	go func() {
		for time.Since(died) < window {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			err := r1.Check(cctx)
			ccancel()
			if err != nil && ctx.Err() == nil {
				reported.Store(err)
				unhold()
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	time.Sleep(window) // measuring the rate over a fixed time
	got := admitted.Load() - before
	rate := float64(got) / window.Seconds()
	t.Logf("r1's admissions: %.1f/s before, %.1f/s in the %v after its subscription died (%d); Check: %v",
		normal, rate, window, got, reported.Load())
	if rate < normal/20 {
		t.Errorf("admissions fell from %.1f/s to %.1f/s with a silently dead subscription", normal, rate)
	}
	if reported.Load() == nil {
		t.Errorf("Check stayed nil for %v while the subscription was dead", window)
	}
}

// subscribers counts Redis's subscribers to the channels of the budget
// (classic and sharded).
func subscribers(t *testing.T, e *faultEnv) int64 {
	t.Helper()
	ctx := context.Background()
	var n int64
	for _, cmd := range []string{"CHANNELS", "SHARDCHANNELS"} {
		chans, err := e.direct.Do(ctx, "PUBSUB", cmd, "*"+e.budget+"*").StringSlice()
		if err != nil {
			t.Fatal(err)
		}
		n += int64(len(chans))
	}
	return n
}

// Property: a lease TTL that the semaphore cannot keep is refused by New with
// a clear error; one it accepts is kept (no lease lost on a healthy Redis).
func TestFaultShortLeaseTTLIsRefusedOrKept(t *testing.T) {
	e := newFaultEnv(t)
	const ttl = 400 * time.Millisecond
	s, err := semaphore.New(e.direct, e.budget, semaphore.Options{Size: 1, LeaseTTL: ttl})
	if err != nil {
		t.Logf("refused: %v", err)
		return
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	l, err := s.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hold := time.NewTimer(5 * ttl) // holding for several TTLs is the point
	defer hold.Stop()
	select {
	case <-l.Context().Done():
		t.Fatalf("a %v lease was lost on a healthy Redis: %v", ttl, context.Cause(l.Context()))
	case <-hold.C:
	}
	if !l.Held() || !e.has(e.keys.leases, l.ID()) {
		t.Fatalf("after %v: held %v, in Redis %v", 5*ttl, l.Held(), e.has(e.keys.leases, l.ID()))
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// Callers whose deadline is too near for a round trip never send their
// acquire. Property: they send no release either (no script calls, no
// goroutines for ids Redis never saw).
func TestFaultNoReleaseForIDsNeverSent(t *testing.T) {
	e := newFaultEnv(t)
	s := e.sem(e.proxied(), semaphore.Options{Size: 1})
	acquires, releases := e.proxy.Count(acquireCall), e.proxy.Count(releaseCall)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			defer cancel()
			var l *semaphore.Lease
			var err error
			if i%2 == 0 {
				l, err = s.Acquire(ctx)
			} else {
				l, err = s.TryAcquire(ctx)
			}
			if err == nil {
				_ = l.Release(context.Background())
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil { // waits for the releases under way
		t.Fatal(err)
	}
	t.Logf("acquire calls %d, release calls %d", acquires.Load(), releases.Load())
	if acquires.Load() == 0 && releases.Load() != 0 {
		t.Fatalf("%d release calls for ids that never reached Redis", releases.Load())
	}
}
