package semaphore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/limiter"
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
	// not answering in time, or a wake-up subscription found dead). With
	// ErrQueueTimeout too, Redis did not answer before the caller's
	// deadline.
	ErrUnavailable = errors.New("semaphore: redis unavailable")
	// ErrClosed is returned by calls on a closed Semaphore.
	ErrClosed = errors.New("semaphore: closed")
)

// The shortest TTLs the background loop can keep (see Options).
const (
	MinLeaseTTL  = 500 * time.Millisecond
	MinWaiterTTL = 100 * time.Millisecond
)

// Options configure a Semaphore. The zero value of each field means its
// documented default; Size is required.
type Options struct {
	// Size is the number of slots, cluster-wide (the vendor's concurrency C).
	Size int
	// LeaseTTL is how long a lease lives in Redis without renewal. Held
	// leases renew on their own schedule, every LeaseTTL/3, all of a
	// replica's in one call; locally a lease counts as held for 0.9 of it
	// from the moment its last renewal was sent, so one failed renewal
	// round is survived. A dead holder's slot returns within it. At least
	// MinLeaseTTL (500ms; New refuses less). Default 15s.
	LeaseTTL time.Duration
	// Rate, if not zero, makes every Acquire also take one token of the
	// budget's token bucket (limiter.Bucket of the same budget), in the
	// same script as the slot.
	Rate limiter.Limit
	// WaiterTTL is how long the queued callers of a replica keep their
	// places without news from it: the replica renews one heartbeat for
	// all of them every WaiterTTL/4, and the waiters of a replica that
	// died are dropped when they reach the head of the queue after it.
	// At least MinWaiterTTL (100ms). Default 2s.
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
	if o.LeaseTTL < MinLeaseTTL {
		return fmt.Errorf("semaphore: lease TTL %s is shorter than %s: renewals every TTL/3 could not keep it", o.LeaseTTL, MinLeaseTTL)
	}
	if o.WaiterTTL < MinWaiterTTL {
		return fmt.Errorf("semaphore: waiter TTL %s is shorter than %s", o.WaiterTTL, MinWaiterTTL)
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
const fallbackPoll = 10 * time.Second

// Semaphore is a cluster-wide counting semaphore of leases. Every Semaphore of
// the same budget on the same Redis shares the slots; they must agree on Size.
// A Semaphore is safe for concurrent use; Close it to stop its background
// work and release what it holds.
type Semaphore struct {
	rdb     redis.UniversalClient
	opt     Options
	st      redisstate.Semaphore
	replica string // this Semaphore's id in Redis; prefix of its lease ids

	acq  *batcher[redisstate.AcquireRequest, redisstate.AcquireReply]
	rel  *batcher[[]string, struct{}]
	conf *batcher[string, bool] // confirms handed-over slots: true if still ours

	mu      sync.Mutex
	waiters map[string]*waiter
	leases  map[string]*Lease
	closed  bool

	stop     context.CancelFunc
	bg       sync.WaitGroup
	cleanups sync.WaitGroup // releases and withdrawals under way
	sub      subscription
}

type waiter struct {
	wake   chan struct{}
	queued bool // Redis answered "queued": the replica's heartbeat keeps it
	// handedAt is the Redis time of a slot handed over to the waiter while
	// it was queued (see redisstate.HandOff); 0 if none.
	handedAt int64
}

// New returns the semaphore of budget. It subscribes to its replica's wake
// channel and starts the renewal loop; it does not fail when Redis is down
// (calls fail until it is back). On a Redis Cluster of Redis 7 or later it
// uses sharded pub/sub, so wake-ups stay on the budget's shard (it asks a
// server's version first, waiting at most 2s).
//
// For calls to end by their deadline when Redis hangs, give it a client
// that honours context deadlines (go-redis Options.ContextTimeoutEnabled, as
// sluice serve does) or has short read and write timeouts. Any retry setting
// of the client is safe (see the package documentation).
func New(rdb redis.UniversalClient, budget string, opt Options) (*Semaphore, error) {
	if err := opt.fill(); err != nil {
		return nil, err
	}
	s := &Semaphore{
		rdb: rdb,
		opt: opt,
		st: redisstate.Semaphore{
			Keys:      redisstate.For(budget),
			Size:      opt.Size,
			LeaseTTL:  opt.LeaseTTL,
			WaiterTTL: opt.WaiterTTL,
			Burst:     opt.Rate.Burst,
			Sharded:   sharded(rdb),
		},
		replica: token(6),
		waiters: map[string]*waiter{},
		leases:  map[string]*Lease{},
	}
	if !opt.Rate.IsZero() {
		s.st.Interval = redisstate.IntervalMicros(opt.Rate.Rate, opt.Rate.Period)
	}
	s.acq = &batcher[redisstate.AcquireRequest, redisstate.AcquireReply]{run: s.acquireBatch, timeout: acquireTimeout,
		abandoned: func(r redisstate.AcquireRequest) { s.withdraw(r.ID) }}
	s.rel = &batcher[[]string, struct{}]{run: s.releaseBatch, timeout: opt.CleanupTimeout}
	s.conf = &batcher[string, bool]{run: s.confirmBatch, timeout: acquireTimeout,
		abandoned: func(id string) { s.withdraw(id) }}
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.sub.init(ctx, rdb, s.st.Keys.WakeChannel(s.replica), s.st.Sharded)
	s.bg.Add(2)
	go s.listen(ctx)
	go s.keep(ctx)
	return s, nil
}

// sharded reports whether rdb is a Redis Cluster whose servers have sharded
// pub/sub (Redis 7+). Asked once; if Redis does not answer, classic pub/sub
// is used, which works everywhere.
func sharded(rdb redis.UniversalClient) bool {
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return false
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			major, _, _ := strings.Cut(v, ".")
			n, err := strconv.Atoi(major)
			return err == nil && n >= 7
		}
	}
	return false
}

// Size returns the number of slots.
func (s *Semaphore) Size() int { return s.opt.Size }

// Acquire waits for a slot (and, with Options.Rate, a token) and returns its
// lease. Callers are served in the order they first asked, across replicas.
// If ctx has a deadline that cannot be met, Acquire fails with
// ErrQueueTimeout, at once when that is known in advance. If ctx is
// cancelled first, it returns ctx's error. Errors of Redis carry
// ErrUnavailable. On any error nothing is held and the caller's place in the
// queue is withdrawn (shielded from ctx's cancellation).
func (s *Semaphore) Acquire(ctx context.Context) (*Lease, error) {
	return s.acquire(ctx, false)
}

// TryAcquire takes a slot only if one is free now and nobody is queued before
// the caller; otherwise it returns ErrNotAcquired. It never waits, except for
// the round trip to Redis.
func (s *Semaphore) TryAcquire(ctx context.Context) (*Lease, error) {
	return s.acquire(ctx, true)
}

func (s *Semaphore) acquire(ctx context.Context, try bool) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError(ctx)
	}
	id := s.newID()
	var w *waiter
	if !try {
		w = &waiter{wake: make(chan struct{}, 1)}
		if !s.addWaiter(id, w) {
			return nil, ErrClosed
		}
		defer func() { s.removeWaiter(id) }()
	} else if s.isClosed() {
		return nil, ErrClosed
	}
	// sent: a request with this id may have reached Redis, so leaving must
	// withdraw it; an id that never left this process needs nothing.
	sent := false
	leave := func() {
		if sent {
			s.withdraw(id)
		}
	}
	for {
		req := redisstate.AcquireRequest{ID: id, MaxWait: -1, Try: try}
		deadline, hasDeadline := ctx.Deadline()
		if hasDeadline {
			left := time.Until(deadline)
			if left < minCallBudget {
				// Too late for a round trip (e.g. woken at the deadline).
				leave()
				return nil, ctxError(ctx)
			}
			req.MaxWait = left
		}
		start := time.Now()
		res, err := s.acq.do(ctx, req)
		if err != nil {
			switch {
			case errors.Is(err, errNotSent):
				// Dropped before it was sent: only earlier requests
				// of the id can be in Redis.
				leave()
			case errors.Is(err, errLeft):
				// In flight when the caller left: the batcher
				// withdraws it once the answer is in, so that the
				// withdrawal cannot run before the request.
			default:
				// The script may have run (a reply lost, a
				// timeout): the id makes undoing it exact.
				sent = true
				leave()
			}
			switch {
			case errors.Is(ctx.Err(), context.Canceled):
				return nil, ctx.Err()
			case errors.Is(err, errLeft):
				// The deadline came during a round trip: nothing says
				// Redis is down.
				return nil, ctxError(ctx)
			case hasDeadline && !time.Now().Before(deadline) && deadline.Sub(start) < unansweredAfter:
				// A short round trip cut by the deadline: nothing says
				// Redis is down.
				return nil, ctxError(ctx)
			case hasDeadline && !time.Now().Before(deadline):
				// Redis did not answer a call before the deadline.
				return nil, fmt.Errorf("%w: %w: %w", ErrQueueTimeout, ErrUnavailable, err)
			}
			return nil, fmt.Errorf("%w: acquire: %w", ErrUnavailable, err)
		}
		sent = true
		switch res.Status {
		case redisstate.Granted:
			l, ok := s.newLease(id, start, res)
			if !ok {
				leave()
				return nil, ErrClosed
			}
			return l, nil
		case redisstate.TooLate:
			return nil, fmt.Errorf("%w: next token in %s, deadline in %s", ErrQueueTimeout,
				res.Hint, time.Until(deadline).Round(time.Millisecond))
		case redisstate.Busy:
			return nil, ErrNotAcquired
		case redisstate.Gone:
			// Withdrawn behind the caller's back (Close): nothing is
			// held under this id.
			if s.isClosed() {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("%w: acquire: the request was withdrawn", ErrUnavailable)
		}
		if try {
			return nil, ErrNotAcquired // never queued (a try is answered busy)
		}
		s.markQueued(id)
		if l, err := s.handedOver(ctx, id, w); l != nil || err != nil {
			if err != nil {
				leave()
			}
			return l, err
		}
		// Waiting: for the slot to be handed over, for a wake-up, for the
		// time the script named (a token, a lease expiry), or for the
		// deadline.
		d := fallbackPoll
		if res.Reason != redisstate.Ahead {
			d = min(d, max(res.Hint, time.Millisecond))
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
			leave()
			return nil, ctxError(ctx)
		}
		t.Stop()
		if s.isClosed() {
			leave()
			return nil, ErrClosed
		}
		if l, err := s.handedOver(ctx, id, w); l != nil || err != nil {
			if err != nil {
				leave()
			}
			return l, err
		}
	}
}

// handedOver returns the lease of a slot handed over to waiter id, if one
// was. Redis reserved it for a short while only (so that a slot handed to a
// replica that just died comes back soon): it is confirmed here with a
// renewal (the confirms of a replica's waiters share calls, like acquires),
// and the lease's life counted from when that was sent. A slot
// whose reservation ran out first is gone: the caller asks again (and queues
// again).
func (s *Semaphore) handedOver(ctx context.Context, id string, w *waiter) (*Lease, error) {
	s.mu.Lock()
	at := w.handedAt
	w.handedAt = 0
	s.mu.Unlock()
	if at == 0 {
		return nil, nil
	}
	sent := time.Now()
	ours, err := s.conf.do(ctx, id)
	if errors.Is(err, errNotSent) || errors.Is(err, errLeft) {
		// Left before the answer: the caller withdraws the slot (and
		// the batcher again once an in-flight confirm is answered, so a
		// confirm cannot outlive the withdrawal).
		return nil, ctxError(ctx)
	}
	if err != nil {
		deadline, hasDeadline := ctx.Deadline()
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			return nil, ctx.Err()
		case ctx.Err() != nil, hasDeadline && !time.Now().Before(deadline):
			// The deadline came during the confirm (ctx's timer may fire
			// a moment after the clock passed it): a slot handed over
			// just before the deadline says nothing about Redis.
			return nil, ctxError(ctx)
		}
		return nil, fmt.Errorf("%w: acquire: confirming a handed-over slot: %w", ErrUnavailable, err)
	}
	if !ours {
		return nil, nil
	}
	l, ok := s.newLease(id, sent, redisstate.AcquireReply{Status: redisstate.Granted, Left: s.opt.LeaseTTL, GrantedAt: at})
	if !ok {
		return nil, ErrClosed
	}
	return l, nil
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
		return fmt.Errorf("%w: release: %w", ErrUnavailable, err)
	}
	return nil
}

// acquireBatch runs acquire.lua for a batch.
func (s *Semaphore) acquireBatch(ctx context.Context, reqs []redisstate.AcquireRequest) ([]redisstate.AcquireReply, error) {
	return s.st.Acquire(ctx, s.rdb, reqs)
}

// confirmBatch renews the slots handed over to a batch of waiters; true for
// each that is still theirs.
func (s *Semaphore) confirmBatch(ctx context.Context, ids []string) ([]bool, error) {
	lost, _, err := s.st.Keepalive(ctx, s.rdb, "", ids)
	if err != nil {
		return nil, err
	}
	ours := make([]bool, len(ids))
	for i, id := range ids {
		ours[i] = !slices.Contains(lost, id)
	}
	return ours, nil
}

// releaseBatch runs release.lua for the ids of a batch of callers.
func (s *Semaphore) releaseBatch(ctx context.Context, reqs [][]string) ([]struct{}, error) {
	var ids []string
	for _, r := range reqs {
		ids = append(ids, r...)
	}
	if _, err := s.st.Release(ctx, s.rdb, ids); err != nil {
		return nil, err
	}
	return make([]struct{}, len(reqs)), nil
}

// Check reports whether Redis answers, the scripts run and the wake-up
// subscription is alive (a subscription that stopped answering its pings,
// e.g. a connection a NAT silently dropped, is reported until it is
// replaced). It also drops expired leases. Use it for readiness probes.
func (s *Semaphore) Check(ctx context.Context) error {
	if err := s.sub.err(); err != nil {
		return err
	}
	if _, _, err := s.st.Keepalive(ctx, s.rdb, "", nil); err != nil {
		return fmt.Errorf("%w: check: %w", ErrUnavailable, err)
	}
	return nil
}

// State is a snapshot of a semaphore's shared state.
type State struct {
	// Holders is the number of live leases, cluster-wide.
	Holders int64
	// Waiters is the number of callers queued, cluster-wide (including
	// those of dead replicas not yet dropped).
	Waiters int64
}

// State returns the number of holders and waiters of the budget, after
// dropping expired leases.
func (s *Semaphore) State(ctx context.Context) (State, error) {
	if _, _, err := s.st.Keepalive(ctx, s.rdb, "", nil); err != nil {
		return State{}, fmt.Errorf("%w: state: %w", ErrUnavailable, err)
	}
	var holders, waiters *redis.IntCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		holders = p.ZCard(ctx, s.st.Keys.Leases)
		waiters = p.ZCard(ctx, s.st.Keys.Queue)
		return nil
	})
	if err != nil {
		return State{}, fmt.Errorf("%w: state: %w", ErrUnavailable, err)
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
	psErr := s.sub.close() // unblocks a receive, which ignores ctx while reading
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

// deliver hands a message of the wake channel to its local waiter: a slot
// handed over, or a wake-up. A message for an id this replica neither waits
// for nor holds is a queue place (or a slot) left behind, e.g. by a
// withdrawal that failed: it is withdrawn, so it cannot stall the queue.
func (s *Semaphore) deliver(payload string) {
	h := redisstate.ParseHandOff(s.replica, payload)
	s.mu.Lock()
	w, l := s.waiters[h.ID], s.leases[h.ID]
	if w != nil {
		if h.GrantedAt != 0 {
			w.handedAt = h.GrantedAt
		}
		notify(w.wake)
	}
	s.mu.Unlock()
	if w == nil && l == nil {
		s.withdraw(h.ID)
	}
}

// wakeAll wakes every local waiter: to ask again.
func (s *Semaphore) wakeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.waiters {
		notify(w.wake)
	}
}

// newID returns a new lease id: the replica's id, a dot, 12 random
// characters (72 bits: unique among the replica's ids by far).
func (s *Semaphore) newID() string { return s.replica + "." + token(9) }

// token returns n random bytes in unpadded base64url (no dots).
func token(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}
