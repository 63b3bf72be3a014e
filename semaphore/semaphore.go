// Package semaphore is a counting semaphore of leases shared by every replica
// through Redis: at most Size holders at once, cluster-wide, served FIFO.
//
// A lease has a TTL in Redis time and renews itself while held, so the slot of
// a replica that dies comes back within the TTL. With Options.Rate set,
// Acquire also takes a token of the budget's token bucket in the same atomic
// script, at the moment the slot is granted: that is sluice's admission,
// which keeps both the vendor's concurrency limit and its rate.
package semaphore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/scripts"
)

var (
	// ErrQueueTimeout means no slot could be had before the caller's
	// deadline: either the deadline passed while waiting, or the script
	// knew at once that it could not be met (the next token comes later).
	// Errors carrying it also match context.DeadlineExceeded when the
	// deadline passed. Nothing is held after it.
	ErrQueueTimeout = errors.New("semaphore: queue timeout")
	// ErrNotAcquired is returned by TryAcquire when no slot is free now.
	ErrNotAcquired = errors.New("semaphore: not acquired")
	// ErrLeaseLost is the cause of a lease's context when the lease expired
	// or could not be renewed in time: another holder may have its slot.
	ErrLeaseLost = errors.New("semaphore: lease lost")
	// ErrReleased is the cause of a lease's context after Release.
	ErrReleased = errors.New("semaphore: lease released")
	// ErrUnavailable marks errors of Redis itself (unreachable, failing,
	// not answering in time). With ErrQueueTimeout too, Redis did not
	// answer before the caller's deadline.
	ErrUnavailable = errors.New("semaphore: redis unavailable")
	// ErrClosed is returned by calls on a closed Semaphore.
	ErrClosed = errors.New("semaphore: closed")
)

// Options configure a Semaphore. The zero value of each field means its
// documented default; Size is required.
type Options struct {
	// Size is the number of slots, cluster-wide (the vendor's concurrency C).
	Size int
	// LeaseTTL is how long a lease lives in Redis without renewal; held
	// leases renew every LeaseTTL/3. A dead holder's slot returns within
	// it. Default 15s.
	LeaseTTL time.Duration
	// Rate, if not zero, makes every Acquire also take one token of the
	// budget's token bucket (limiter.Bucket of the same budget), in the
	// same script as the slot.
	Rate limiter.Limit
	// WaiterTTL is how long a queued caller keeps its place without
	// renewal; a replica renews its waiters every WaiterTTL/4, in one call.
	// A waiter whose replica dies leaves the queue within it. Default 2s.
	WaiterTTL time.Duration
	// CleanupTimeout bounds shielded cleanup (release, withdrawing from the
	// queue), which runs even when the caller's context is done. Default 2s.
	CleanupTimeout time.Duration
}

func (o *Options) fill() error {
	if o.Size <= 0 {
		return fmt.Errorf("semaphore: size must be positive, got %d", o.Size)
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 15 * time.Second
	}
	if o.WaiterTTL == 0 {
		o.WaiterTTL = 2 * time.Second
	}
	if o.CleanupTimeout == 0 {
		o.CleanupTimeout = 2 * time.Second
	}
	if o.LeaseTTL < 30*time.Millisecond || o.WaiterTTL < 20*time.Millisecond {
		return fmt.Errorf("semaphore: lease TTL (%s) and waiter TTL (%s) too short", o.LeaseTTL, o.WaiterTTL)
	}
	if !o.Rate.IsZero() {
		if err := o.Rate.Validate(); err != nil {
			return fmt.Errorf("semaphore: %w", err)
		}
	}
	return nil
}

// acquireTimeout bounds one acquire call to Redis (the callers' deadlines
// bound it too).
const acquireTimeout = 5 * time.Second

// minCallBudget is the least time left before the deadline for which a call
// to Redis is still worth making; unansweredAfter is how long a call must
// have had for its cut by the deadline to say that Redis does not answer.
const (
	minCallBudget   = 2 * time.Millisecond
	unansweredAfter = 100 * time.Millisecond
)

// fallbackPoll bounds how long a waiter sleeps without news; wake-ups come by
// pub/sub, so this only matters if a message was lost.
const fallbackPoll = 5 * time.Second

// Semaphore is a cluster-wide counting semaphore of leases. Every Semaphore of
// the same budget on the same Redis shares the slots; they must agree on Size.
// A Semaphore is safe for concurrent use; Close it to stop its background
// work and release what it holds.
type Semaphore struct {
	rdb      redis.UniversalClient
	opt      Options
	keys     []string // leases, queue, waiters, bucket
	channel  string
	interval int64 // microseconds per token; 0 without Rate

	acq *batcher[acquireReq, [3]int64]
	rel *batcher[[]string, struct{}]

	mu      sync.Mutex
	waiters map[string]*waiter
	leases  map[string]*Lease
	closed  bool

	stop     context.CancelFunc
	bg       sync.WaitGroup
	cleanups sync.WaitGroup // releases and withdrawals under way
	ps       *redis.PubSub
}

type waiter struct {
	wake   chan struct{}
	queued bool
}

// New returns the semaphore of budget. It subscribes to the budget's wake
// channel and starts the renewal loop; it does not fail when Redis is down
// (calls fail until it is back).
//
// For calls to end by their deadline when Redis hangs, give it a client
// that honours context deadlines (go-redis Options.ContextTimeoutEnabled, as
// sluice serve does) or has short read and write timeouts.
func New(rdb redis.UniversalClient, budget string, opt Options) (*Semaphore, error) {
	if err := opt.fill(); err != nil {
		return nil, err
	}
	p := limiter.KeyPrefix(budget)
	s := &Semaphore{
		rdb:     rdb,
		opt:     opt,
		keys:    []string{p + "leases", p + "queue", p + "waiters", limiter.BucketKey(budget)},
		channel: p + "wake",
		waiters: map[string]*waiter{},
		leases:  map[string]*Lease{},
	}
	if !opt.Rate.IsZero() {
		s.interval = limiter.IntervalMicros(opt.Rate)
	}
	s.acq = &batcher[acquireReq, [3]int64]{run: s.acquireBatch, timeout: acquireTimeout,
		abandoned: func(r acquireReq) { s.withdraw(r.id) }}
	s.rel = &batcher[[]string, struct{}]{run: s.releaseBatch, timeout: opt.CleanupTimeout}
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.ps = rdb.Subscribe(ctx, s.channel)
	s.bg.Add(2)
	go s.listen(ctx)
	go s.keep(ctx)
	return s, nil
}

// Size returns the number of slots.
func (s *Semaphore) Size() int { return s.opt.Size }

// Acquire waits for a slot (and, with Options.Rate, a token) and returns its
// lease. Callers are served in the order they first asked, across replicas.
// If ctx has a deadline that cannot be met, Acquire fails with
// ErrQueueTimeout, at once when that is known in advance. If ctx ends first,
// it returns ctx's error. On any error nothing is held and the caller's place
// in the queue is withdrawn (shielded from ctx's cancellation).
func (s *Semaphore) Acquire(ctx context.Context) (*Lease, error) {
	return s.acquire(ctx, false)
}

// TryAcquire takes a slot only if one is free now and nobody is queued before
// the caller; otherwise it returns ErrNotAcquired. It never waits, except for
// the round trip to Redis.
func (s *Semaphore) TryAcquire(ctx context.Context) (*Lease, error) {
	return s.acquire(ctx, true)
}

// acquire statuses, as acquire.lua returns them.
const (
	granted  = 1
	waiting  = 0
	tooLate  = -1
	busy     = -2
	waitRate = 3
)

func (s *Semaphore) acquire(ctx context.Context, try bool) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError(ctx)
	}
	id := newID()
	var w *waiter
	if !try {
		w = &waiter{wake: make(chan struct{}, 1)}
		if !s.addWaiter(id, w) {
			return nil, ErrClosed
		}
		defer s.removeWaiter(id)
	} else if s.isClosed() {
		return nil, ErrClosed
	}
	for {
		maxWait := int64(-1)
		deadline, hasDeadline := ctx.Deadline()
		if hasDeadline {
			left := time.Until(deadline)
			if left < minCallBudget {
				// Too late for a round trip (e.g. woken at the deadline).
				s.withdraw(id)
				return nil, ctxError(ctx)
			}
			maxWait = left.Microseconds()
		}
		sent := time.Now()
		res, err := s.acq.do(ctx, acquireReq{id: id, maxWait: maxWait, try: try})
		if err != nil {
			// The script may have run (a reply lost, a timeout): the id
			// makes undoing it exact. A caller that left before the
			// answer is undone by the batcher once the answer is in.
			if !errors.Is(err, errLeft) {
				s.withdraw(id)
			}
			switch {
			case errors.Is(ctx.Err(), context.Canceled):
				return nil, ctx.Err()
			case errors.Is(err, errLeft):
				// The deadline came during a round trip: nothing says
				// Redis is down.
				return nil, ctxError(ctx)
			case hasDeadline && !time.Now().Before(deadline) && deadline.Sub(sent) < unansweredAfter:
				// A short round trip cut by the deadline: nothing says
				// Redis is down.
				return nil, ctxError(ctx)
			case hasDeadline && !time.Now().Before(deadline):
				// Redis did not answer a call before the deadline.
				return nil, fmt.Errorf("%w: %w: %w", ErrQueueTimeout, ErrUnavailable, err)
			}
			return nil, fmt.Errorf("%w: acquire: %w", ErrUnavailable, err)
		}
		switch res[0] {
		case granted:
			l, ok := s.newLease(id, sent, res[1])
			if !ok {
				s.withdraw(id)
				return nil, ErrClosed
			}
			return l, nil
		case tooLate:
			return nil, fmt.Errorf("%w: next token in %s, deadline in %s", ErrQueueTimeout,
				time.Duration(res[2])*time.Microsecond, time.Until(deadline).Round(time.Millisecond))
		case busy:
			return nil, ErrNotAcquired
		}
		s.markQueued(id)
		// Waiting: for a wake-up (our turn, a release), for the time the
		// script named (a token, a lease expiry), or for the deadline.
		d := fallbackPoll
		if res[1] > 1 {
			d = min(d, max(time.Duration(res[2])*time.Microsecond, time.Millisecond))
		}
		if hasDeadline {
			d = min(d, time.Until(deadline))
		}
		t := time.NewTimer(d)
		select {
		case <-w.wake:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			s.withdraw(id)
			return nil, ctxError(ctx)
		}
		t.Stop()
		if s.isClosed() {
			s.withdraw(id)
			return nil, ErrClosed
		}
	}
}

// ctxError is the error of a wait that ctx ended, or whose deadline passed
// (ctx may not say so yet: its timer can fire after the clock passed it).
func ctxError(ctx context.Context) error {
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrQueueTimeout, context.DeadlineExceeded)
}

// withdraw removes id from the queue and releases it if it was granted, in
// the background: the caller answers at once even if Redis is slow, and the
// id makes the undo exact whenever it runs. Close waits for it.
func (s *Semaphore) withdraw(id string) {
	if !s.beginCleanup() {
		_ = s.release(context.Background(), id)
		return
	}
	go func() {
		defer s.cleanups.Done()
		_ = s.release(context.Background(), id)
	}()
}

// beginCleanup counts a cleanup that Close must wait for; false once closed.
func (s *Semaphore) beginCleanup() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.cleanups.Add(1)
	return true
}

func (s *Semaphore) release(ctx context.Context, ids ...string) error {
	if _, err := s.rel.do(context.WithoutCancel(ctx), ids); err != nil {
		return fmt.Errorf("semaphore: release: %w", err)
	}
	return nil
}

// acquireReq is one caller's request in a batch of acquire.lua.
type acquireReq struct {
	id      string
	maxWait int64 // microseconds; -1: no limit
	try     bool
}

// acquireBatch runs acquire.lua for a batch; one {status, reason, hint} each.
func (s *Semaphore) acquireBatch(ctx context.Context, reqs []acquireReq) ([][3]int64, error) {
	args := make([]any, 0, 6+3*len(reqs))
	args = append(args, s.opt.Size, s.opt.LeaseTTL.Microseconds(), s.opt.WaiterTTL.Microseconds(),
		s.interval, s.opt.Rate.Burst, s.channel)
	for _, r := range reqs {
		mode := "wait"
		if r.try {
			mode = "try"
		}
		args = append(args, r.id, r.maxWait, mode)
	}
	flat, err := scripts.Acquire.Run(ctx, s.rdb, s.keys, args...).Int64Slice()
	if err != nil {
		return nil, err
	}
	if len(flat) != 3*len(reqs) {
		return nil, fmt.Errorf("unexpected reply %v", flat)
	}
	out := make([][3]int64, len(reqs))
	for i := range out {
		copy(out[i][:], flat[3*i:])
	}
	return out, nil
}

// releaseBatch runs release.lua for the ids of a batch of callers.
func (s *Semaphore) releaseBatch(ctx context.Context, reqs [][]string) ([]struct{}, error) {
	args := []any{s.channel}
	for _, ids := range reqs {
		for _, id := range ids {
			args = append(args, id)
		}
	}
	if err := scripts.Release.Run(ctx, s.rdb, s.keys[:3], args...).Err(); err != nil {
		return nil, err
	}
	return make([]struct{}, len(reqs)), nil
}

// Check reports whether Redis answers and the scripts run; it also drops
// expired leases and waiters. Use it for readiness probes.
func (s *Semaphore) Check(ctx context.Context) error {
	_, _, err := s.keepalive(ctx, nil, nil)
	return err
}

// State is a snapshot of a semaphore's shared state.
type State struct {
	// Holders is the number of live leases, cluster-wide.
	Holders int64
	// Waiters is the number of callers queued, cluster-wide.
	Waiters int64
}

// State returns the number of holders and waiters of the budget, after
// dropping expired ones.
func (s *Semaphore) State(ctx context.Context) (State, error) {
	if err := s.Check(ctx); err != nil {
		return State{}, err
	}
	var holders, waiters *redis.IntCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		holders = p.ZCard(ctx, s.keys[0])
		waiters = p.ZCard(ctx, s.keys[1])
		return nil
	})
	if err != nil {
		return State{}, fmt.Errorf("semaphore: state: %w", err)
	}
	return State{Holders: holders.Val(), Waiters: waiters.Val()}, nil
}

// Close stops the semaphore: waiters fail with ErrClosed, every lease it holds
// is released (one call to Redis, bounded by Options.CleanupTimeout) and its
// context cancelled, and background work stops. Close is idempotent.
func (s *Semaphore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	held := make([]*Lease, 0, len(s.leases))
	ids := make([]string, 0, len(s.leases))
	for id, l := range s.leases {
		held = append(held, l)
		ids = append(ids, id)
	}
	for _, w := range s.waiters {
		notify(w.wake)
	}
	s.mu.Unlock()

	var err error
	for _, l := range held {
		l.end(ErrReleased)
	}
	if len(ids) > 0 {
		err = s.release(context.Background(), ids...)
	}
	s.cleanups.Wait() // releases that callers started before Close
	s.stop()
	psErr := s.ps.Close() // unblocks Receive, which ignores ctx while reading
	s.bg.Wait()
	return errors.Join(err, psErr)
}

func (s *Semaphore) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Semaphore) addWaiter(id string, w *waiter) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.waiters[id] = w
	return true
}

func (s *Semaphore) markQueued(id string) {
	s.mu.Lock()
	if w := s.waiters[id]; w != nil {
		w.queued = true
	}
	s.mu.Unlock()
}

func (s *Semaphore) removeWaiter(id string) {
	s.mu.Lock()
	delete(s.waiters, id)
	s.mu.Unlock()
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// wake wakes the local waiter id, if it is ours; all waiters for "".
func (s *Semaphore) wake(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != "" {
		if w := s.waiters[id]; w != nil {
			notify(w.wake)
		}
		return
	}
	for _, w := range s.waiters {
		notify(w.wake)
	}
}

// listen routes wake-ups from the budget's channel to local waiters. After
// every (re)subscription it wakes them all, since messages sent while the
// subscription was down are lost.
func (s *Semaphore) listen(ctx context.Context) {
	defer s.bg.Done()
	backoff := 50 * time.Millisecond
	for {
		msg, err := s.ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Message:
			s.wake(m.Payload)
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				s.wake("")
			}
		}
	}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
