package semaphore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/redisstate"
)

// Lease is one slot of a Semaphore, held until Release or until it is lost.
// While held it renews itself in the background. Methods are safe for
// concurrent use.
type Lease struct {
	s      *Semaphore
	id     string
	ctx    context.Context
	cancel context.CancelCauseFunc
	// granted is the Redis time of the grant in microseconds, 0 if unknown.
	granted int64

	mu         sync.Mutex
	validUntil time.Time // local monotonic time up to which the slot is surely ours
	timer      *time.Timer
	ended      bool

	releaseOnce sync.Once
	releaseErr  error
}

// validUntil is the local time up to which a lease is surely still ours when
// Redis, running a script sent at sent, said it had left to live: that life
// counted from before the script ran (never from the answer, which may come
// late or be a resent call's), less a margin of a tenth of the TTL for clock
// rate differences.
func (s *Semaphore) validUntil(sent time.Time, left time.Duration) time.Time {
	return sent.Add(left - s.opt.LeaseTTL/10)
}

func (s *Semaphore) newLease(id string, sent time.Time, res redisstate.AcquireReply) (*Lease, bool) {
	ctx, cancel := context.WithCancelCause(context.Background())
	l := &Lease{s: s, id: id, ctx: ctx, cancel: cancel, granted: res.GrantedAt, validUntil: s.validUntil(sent, res.Left)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel(ErrClosed)
		return nil, false
	}
	s.leases[id] = l
	l.mu.Lock()
	l.timer = time.AfterFunc(time.Until(l.validUntil), l.expire)
	l.mu.Unlock()
	s.mu.Unlock()
	return l, true
}

// ID returns the lease's id, as stored in Redis.
func (l *Lease) ID() string { return l.id }

// GrantedAt returns when Redis granted the lease, by Redis's clock. Useful to correlate logs across replicas.
func (l *Lease) GrantedAt() time.Time {
	if l.granted == 0 {
		return time.Time{}
	}
	return time.UnixMicro(l.granted)
}

// Context is done when the lease ends: released (cause ErrReleased) or lost
// (cause ErrLeaseLost; see context.Cause). Derive the work the lease guards
// from it, so that losing the slot aborts the work.
func (l *Lease) Context() context.Context { return l.ctx }

// Bind returns a context derived from parent that also ends when the lease
// ends (lost, released or closed), with the lease's cause (see
// context.Cause). Run the work the lease guards under it, so that losing the
// slot aborts the work and the work ends with its caller too. Call cancel
// when the work is done.
func (l *Lease) Bind(parent context.Context) (ctx context.Context, cancel context.CancelFunc) {
	ctx, cancelCause := context.WithCancelCause(parent)
	stop := context.AfterFunc(l.ctx, func() { cancelCause(context.Cause(l.ctx)) })
	return ctx, func() {
		stop()
		cancelCause(context.Canceled)
	}
}

// Err returns nil while the lease is held, else why it ended (ErrReleased,
// ErrLeaseLost or ErrClosed).
func (l *Lease) Err() error {
	if l.ctx.Err() == nil {
		return nil
	}
	return context.Cause(l.ctx)
}

// Held reports whether the slot is surely still this lease's. It checks a
// local deadline on the monotonic clock, so a process that was frozen past
// the lease TTL learns at once, before its renewal loop has run: check Held
// right before starting the guarded work.
func (l *Lease) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.ended && time.Now().Before(l.validUntil)
}

// Release gives the slot back and wakes the next waiter. It is idempotent and
// shielded: it runs to completion even if ctx is already cancelled, bounded by
// Options.CleanupTimeout. If Redis cannot be reached, the slot returns when
// the lease's TTL runs out, and the error says so.
func (l *Lease) Release(ctx context.Context) error {
	l.releaseOnce.Do(func() {
		if l.s.beginCleanup() {
			defer l.s.cleanups.Done()
		}
		if !l.end(ErrReleased) && errors.Is(context.Cause(l.ctx), ErrReleased) {
			return // Close released it
		}
		l.releaseErr = l.s.release(ctx, l.id)
	})
	return l.releaseErr
}

// extend records a renewal to ttl sent at sent.
func (l *Lease) extend(sent time.Time, ttl time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	if until := l.s.validUntil(sent, ttl); until.After(l.validUntil) {
		l.validUntil = until
		l.timer.Reset(time.Until(until))
	}
}

// expire runs when the local deadline passes without renewal.
func (l *Lease) expire() {
	l.mu.Lock()
	left := time.Until(l.validUntil)
	if left > 0 && !l.ended {
		l.timer.Reset(left)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.end(ErrLeaseLost)
}

// end ends the lease locally with cause; it reports whether this call did.
func (l *Lease) end(cause error) bool {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return false
	}
	l.ended = true
	l.timer.Stop()
	l.mu.Unlock()
	l.cancel(cause)
	l.s.mu.Lock()
	delete(l.s.leases, l.id)
	l.s.mu.Unlock()
	return true
}
