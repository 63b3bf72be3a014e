package semaphore_test

// Faults injected for real between a go-redis client and Redis (a proxy that
// drops replies, holds requests, black-holes a connection), each test stating
// the property it checks, observed in Redis itself.

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/faultproxy"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

// A TryAcquire whose reply is lost is retried by go-redis with the same id
// (or fails, without retries). Property: TryAcquire never says "not
// acquired" (or fails) while Redis holds a lease for it (a slot lost for a
// whole lease TTL); whatever it answers, Redis agrees.
func TestFaultRetriedTryAcquireAgreesWithRedis(t *testing.T) {
	for _, retries := range []int{3, -1} {
		t.Run("MaxRetries="+strconv.Itoa(retries), func(t *testing.T) {
			e := newFaultEnv(t)
			// Two slots and one token per hour: the first run takes the
			// token, so a retry that does not know it was granted finds no
			// token left.
			s := e.sem(e.proxiedWith(retries), semaphore.Options{Size: 2, Rate: limiter.Limit{Rate: 1, Burst: 1, Period: time.Hour}})
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
		})
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

// A storm of faults on script calls for a few seconds: lost replies
// (go-redis resends the call) and delayed requests, while callers on four
// replicas acquire with random deadlines or try, hold briefly and release.
// Properties: never more than Size leases believed held at the moment their
// holders act (I1, by Held()); a lease believed held is in Redis; and once
// every replica is closed, nothing is left in Redis: no lease, no queue
// place (I3).
func TestFaultStormKeepsInvariants(t *testing.T) {
	e := newFaultEnv(t)
	const size, workers, storm = 3, 12, 4 * time.Second
	opt := semaphore.Options{Size: size}
	sems := []*semaphore.Semaphore{e.sem(e.proxied(), opt), e.sem(e.proxied(), opt), e.sem(e.proxied(), opt), e.sem(e.direct, opt)}
	anyScript := faultproxy.Match{Cmd: "EVALSHA"}
	end := time.Now().Add(storm)

	var (
		mu       sync.Mutex
		acting   = map[*semaphore.Lease]bool{}
		admitted atomic.Int64
		wg       sync.WaitGroup
	)
	act := func(l *semaphore.Lease) {
		mu.Lock()
		defer mu.Unlock()
		if !l.Held() {
			return // lost before acting: the holder does not act
		}
		acting[l] = true
		held := 0
		for o := range acting {
			if o.Held() {
				held++
			}
		}
		if held > size {
			t.Errorf("%d leases believed held at once, Size %d", held, size)
		}
	}
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			s := sems[w%len(sems)]
			for time.Now().Before(end) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20+rng.IntN(400))*time.Millisecond)
				var l *semaphore.Lease
				var err error
				if rng.IntN(4) == 0 {
					l, err = s.TryAcquire(ctx)
				} else {
					l, err = s.Acquire(ctx)
				}
				cancel()
				if err != nil {
					continue // refusals, deadlines and failed calls are all allowed
				}
				admitted.Add(1)
				act(l)
				err = e.direct.ZScore(context.Background(), e.keys.leases, l.ID()).Err()
				if err != nil && l.Held() {
					t.Errorf("lease believed held is not in Redis: %v", err)
				}
				time.Sleep(time.Duration(1+rng.IntN(20)) * time.Millisecond) // the guarded work
				mu.Lock()
				delete(acting, l)
				mu.Unlock()
				if err := l.Release(context.Background()); err != nil {
					t.Errorf("release: %v", err)
				}
			}
		})
	}

	// The storm: one fault every 20-100ms, each on the next matching call.
	// Lost replies are spaced out (one outstanding, 500ms after the last
	// one hit) so that no call loses more replies than go-redis retries
	// (its retries of one call span ~100ms): the faults are network
	// faults, not an outage.
	rng := rand.New(rand.NewPCG(1, 2))
	faults := 0
	var lastDrop *faultproxy.Rule
	var lastHit time.Time
	for time.Now().Before(end) {
		if lastDrop != nil && lastHit.IsZero() {
			select {
			case <-lastDrop.Matched():
				lastHit = time.Now()
			default:
			}
		}
		dropOK := lastDrop == nil || (!lastHit.IsZero() && time.Since(lastHit) > 500*time.Millisecond)
		d := time.Duration(50+rng.IntN(300)) * time.Millisecond
		switch k := rng.IntN(6); {
		case k < 3 && dropOK:
			lastDrop = e.proxy.DropReply([]faultproxy.Match{anyScript, acquireCall, releaseCall}[k])
			lastHit = time.Time{}
		case k%3 == 0:
			e.proxy.Delay(acquireCall, d)
		case k%3 == 1:
			e.proxy.Delay(releaseCall, d)
		default:
			e.proxy.Delay(anyScript, d)
		}
		faults++
		time.Sleep(time.Duration(20+rng.IntN(80)) * time.Millisecond) // the storm's pace
	}
	wg.Wait()
	for _, s := range sems {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	t.Logf("%d admissions under %d faults", admitted.Load(), faults)
	if admitted.Load() < 5 {
		t.Errorf("only %d admissions in %v", admitted.Load(), storm)
	}
	// Calls still delayed at the proxy (up to 350ms) arrive after Close.
	if !eventually(3*time.Second, func() bool { return e.card(e.keys.leases)+e.card(e.keys.queue) == 0 }) {
		t.Fatalf("left behind after every replica closed: %d leases, %d queued", e.card(e.keys.leases), e.card(e.keys.queue))
	}
}

// Every renewal of a lease is stuck on its way to Redis until the lease has
// expired there and another replica took the slot; then the stuck renewals
// arrive. Properties: Held() turns false before Redis drops the lease (never
// held while Redis has no lease for it), the lease's context ends with
// ErrLeaseLost, and the late renewals do not resurrect it (no C+1 holders).
func TestFaultStuckRenewalsLoseTheLeaseCleanly(t *testing.T) {
	e := newFaultEnv(t)
	const ttl = 2 * time.Second
	opt := semaphore.Options{Size: 1, LeaseTTL: ttl}
	a := e.sem(e.proxied(), opt)
	b := e.sem(e.direct, opt)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Hold every script call of a from now on (its renewals) until release
	// is closed; the held ones arrive on matched.
	release, stop := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unhold := func() { releaseOnce.Do(func() { close(release) }) }
	defer unhold()
	matched := make(chan *faultproxy.Rule, 100)
	var holding sync.WaitGroup
	holding.Go(func() {
		for {
			r := e.proxy.Hold(faultproxy.Match{Cmd: "EVALSHA"}, release)
			select {
			case <-r.Matched():
				matched <- r
			case <-stop:
				return
			}
		}
	})
	var stuck []*faultproxy.Rule
	select {
	case r := <-matched:
		stuck = append(stuck, r)
	case <-time.After(2 * ttl):
		t.Fatal("no renewal reached the proxy")
	}

	for l.Held() {
		if !e.has(e.keys.leases, l.ID()) {
			t.Fatal("Held() is true while Redis has no lease for it")
		}
		time.Sleep(10 * time.Millisecond)
	}
	within(t, l.Context().Done(), ttl, "the lease's context ending")
	if cause := context.Cause(l.Context()); !errors.Is(cause, semaphore.ErrLeaseLost) {
		t.Fatalf("lease ended with %v, want ErrLeaseLost", cause)
	}
	other, err := b.Acquire(ctx) // the slot returns at the TTL in Redis
	if err != nil {
		t.Fatal(err)
	}

	// The stuck renewals arrive, late.
	close(stop)
	holding.Wait()
	close(matched)
	for r := range matched {
		stuck = append(stuck, r)
	}
	unhold()
	for _, r := range stuck {
		within(t, r.Done(), 5*time.Second, "a late renewal, answered by Redis")
	}
	if e.has(e.keys.leases, l.ID()) || l.Held() {
		t.Fatalf("a late renewal resurrected the lost lease (in Redis %v, held %v): C+1 holders", e.has(e.keys.leases, l.ID()), l.Held())
	}
	if !other.Held() || !e.has(e.keys.leases, other.ID()) || e.card(e.keys.leases) != 1 {
		t.Fatalf("the new holder: held %v, in Redis %v, %d leases", other.Held(), e.has(e.keys.leases, other.ID()), e.card(e.keys.leases))
	}
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// A slot handed over to a waiter just before its deadline, whose
// confirmation the deadline then cuts, is a queue timeout: Redis answered
// everything it was asked in time, so the caller must not be told that
// Redis is unavailable (the gateway would answer backend_unavailable for a
// budget that was only full).
func TestFaultConfirmCutByTheDeadlineIsAQueueTimeout(t *testing.T) {
	e := newFaultEnv(t)
	// A long waiter TTL: no heartbeat round of the waiter's replica runs
	// during the test, so the next keepalive call is the confirmation.
	opt := semaphore.Options{Size: 1, WaiterTTL: 20 * time.Second}
	holder := e.sem(e.direct, opt)
	waiting := e.sem(e.proxied(), opt)
	lease, err := holder.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unhold := make(chan struct{})
	defer close(unhold)
	confirm := e.proxy.Hold(keepaliveCall, unhold)

	// A context whose timer fires a moment after its deadline, as a busy
	// runtime's may: what the deadline cut must be judged by the clock.
	parent, cancel := context.WithTimeout(context.Background(), 1800*time.Millisecond)
	defer cancel()
	ctx := lateTimer{parent, time.Now().Add(1500 * time.Millisecond)}
	done := make(chan error, 1)
	go func() {
		l, err := waiting.Acquire(ctx)
		if l != nil {
			_ = l.Release(context.Background())
		}
		done <- err
	}()
	if !eventually(5*time.Second, func() bool { return e.card(e.keys.queue) == 1 }) {
		t.Fatal("the waiter never queued")
	}
	if err := lease.Release(context.Background()); err != nil { // hands the slot over
		t.Fatal(err)
	}
	within(t, confirm.Matched(), 5*time.Second, "the confirmation of the handed-over slot")
	err = <-done
	if !errors.Is(err, semaphore.ErrQueueTimeout) || errors.Is(err, semaphore.ErrUnavailable) {
		t.Fatalf("a confirmation cut by the caller's deadline: got %v, want ErrQueueTimeout without ErrUnavailable", err)
	}
}

// lateTimer is a context whose deadline passes before its Done channel
// closes (its timer fires late).
type lateTimer struct {
	context.Context
	deadline time.Time
}

func (c lateTimer) Deadline() (time.Time, bool) { return c.deadline, true }
