package limiter

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
)

var (
	// ErrQueueTimeout means the caller's deadline cannot be met. When the
	// earliest slot the bucket can give is later than ctx's deadline, it is
	// returned at once, without waiting, and the bucket is left unchanged.
	// When the deadline itself passed (while waiting, or during the call to
	// Redis), the error also matches context.DeadlineExceeded.
	ErrQueueTimeout = errors.New("limiter: queue timeout")
	// ErrCostExceedsBurst means a caller asked for more tokens than the
	// bucket can ever hold.
	ErrCostExceedsBurst = errors.New("limiter: cost exceeds burst")
	// ErrUnavailable marks errors of Redis itself (unreachable, failing,
	// not answering in time): the caller holds no reservation (tokens that
	// a script reserved before its reply was lost are lost, never spent
	// twice). With
	// ErrQueueTimeout too, Redis did not answer before the caller's
	// deadline. Test it before ErrQueueTimeout to tell an outage from a
	// full bucket.
	ErrUnavailable = errors.New("limiter: redis unavailable")
)

// Bucket is a token bucket shared by every replica through Redis: Rate tokens
// per Period, holding at most Burst. Callers that find it empty WAIT for their
// turn instead of being rejected, and are served in the order they reserved,
// across all replicas: each reservation is one atomic script run that moves
// the bucket's theoretical arrival time (GCRA), so the bucket never grants
// more than Burst + Rate*W tokens in any window of length W.
//
// Time is Redis's clock, read inside the script: replica clocks never enter a
// decision (only the relative deadline of a caller does). A Bucket is safe for
// concurrent use.
type Bucket struct {
	rdb      redis.Scripter
	keys     redisstate.Keys
	limit    Limit
	interval int64 // microseconds per token, rounded up so the rate is never exceeded
}

// NewBucket returns the bucket of budget with limit lim. Every Bucket of the
// same budget on the same Redis shares one state; they must agree on lim.
func NewBucket(rdb redis.Scripter, budget string, lim Limit) (*Bucket, error) {
	if err := lim.Validate(); err != nil {
		return nil, err
	}
	return &Bucket{rdb: rdb, keys: redisstate.For(budget), limit: lim, interval: redisstate.IntervalMicros(lim.Rate, lim.Period)}, nil
}

// Limit returns the bucket's limit.
func (b *Bucket) Limit() Limit { return b.limit }

// Reservation is a claim on tokens of a Bucket: the holder may act from
// TimeToAct on. Cancel it if it will not act.
type Reservation struct {
	b     *Bucket
	n     int
	tat   int64
	actAt time.Time
	done  atomic.Bool
}

// Delay is how long the holder must still wait before acting: zero once
// TimeToAct has passed. It counts down, as x/time/rate's does.
func (r *Reservation) Delay() time.Duration { return max(time.Until(r.actAt), 0) }

// TimeToAct is the local time from which the holder may act. It is never
// before the slot Redis gave: the wait Redis named is counted from when its
// reply arrived, which is after the script ran.
func (r *Reservation) TimeToAct() time.Time { return r.actAt }

// Cancel tells the bucket the reserved tokens will not be used. They are given
// back only when that can never let the bucket exceed its limit: when this is
// still the bucket's latest reservation. Otherwise they are simply lost, never
// spent twice. Cancel is shielded: it runs even if ctx is already cancelled,
// with its own short deadline. It reports whether the tokens were given back;
// only the first call does anything.
func (r *Reservation) Cancel(ctx context.Context) (bool, error) {
	if !r.done.CompareAndSwap(false, true) {
		return false, nil
	}
	ctx, stop := context.WithTimeout(context.WithoutCancel(ctx), shieldTimeout)
	defer stop()
	back, err := r.b.keys.Cancel(ctx, r.b.rdb, r.b.interval, r.n, r.tat)
	if err != nil {
		return false, fmt.Errorf("%w: cancel: %w", ErrUnavailable, err)
	}
	return back, nil
}

// shieldTimeout bounds cleanup that must run after the caller gave up.
const shieldTimeout = 2 * time.Second

// unansweredAfter is how long a call to Redis must have had before the
// caller's deadline for its cut by that deadline to say that Redis does not
// answer (rather than that the caller came too late).
const unansweredAfter = 100 * time.Millisecond

// Reserve reserves n tokens and returns when the caller may use them,
// without waiting. The caller may wait until ctx's deadline (any time when
// ctx has none): if the earliest slot is later, Reserve returns
// ErrQueueTimeout at once and takes nothing.
func (b *Bucket) Reserve(ctx context.Context, n int) (*Reservation, error) {
	if n > b.limit.Burst {
		return nil, fmt.Errorf("%w: %d > %d", ErrCostExceedsBurst, n, b.limit.Burst)
	}
	if n <= 0 {
		return nil, fmt.Errorf("limiter: cost must be positive, got %d", n)
	}
	if ctx.Err() != nil {
		return nil, ctxError(ctx)
	}
	maxWait := time.Duration(-1) // no limit
	deadline, hasDeadline := ctx.Deadline()
	if hasDeadline {
		maxWait = time.Until(deadline).Truncate(time.Microsecond)
		if maxWait <= 0 {
			return nil, ctxError(ctx)
		}
	}
	sent := time.Now()
	res, err := b.keys.Reserve(ctx, b.rdb, b.interval, b.limit.Burst, n, maxWait)
	// The wait Redis names counts from when the script ran; the reply came
	// after that. Counting from the reply can only act later than the slot,
	// never earlier, however long the call spent in the pool, on the
	// network or behind a busy Redis.
	replied := time.Now()
	if err != nil {
		// A reservation the script made before the reply was lost stays
		// unused: its tokens are lost, never spent twice.
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			return nil, ctx.Err()
		case hasDeadline && !replied.Before(deadline) && deadline.Sub(sent) < unansweredAfter:
			return nil, ctxError(ctx)
		case hasDeadline && !replied.Before(deadline):
			return nil, fmt.Errorf("%w: %w: reserve: %w", ErrQueueTimeout, ErrUnavailable, err)
		}
		return nil, fmt.Errorf("%w: reserve: %w", ErrUnavailable, err)
	}
	wait := res.Wait
	if !res.OK {
		return nil, fmt.Errorf("%w: next slot in %s, deadline in %s", ErrQueueTimeout, wait, deadline.Sub(sent).Round(time.Millisecond))
	}
	r := &Reservation{b: b, n: n, tat: res.TAT, actAt: replied.Add(wait)}
	if hasDeadline && r.actAt.After(deadline) {
		// The round trip used up the margin the script allowed for.
		_, _ = r.Cancel(ctx)
		if !replied.Before(deadline) {
			return nil, ctxError(ctx)
		}
		return nil, fmt.Errorf("%w: next slot in %s, deadline in %s", ErrQueueTimeout, wait, deadline.Sub(replied).Round(time.Millisecond))
	}
	return r, nil
}

// Wait is WaitN(ctx, 1).
func (b *Bucket) Wait(ctx context.Context) error { return b.WaitN(ctx, 1) }

// WaitN blocks until n tokens are the caller's, or fails. If ctx has a
// deadline that the earliest slot cannot meet, it returns ErrQueueTimeout at
// once, consuming nothing. If ctx ends while waiting, the tokens are given
// back when that is safe (see Reservation.Cancel) and WaitN returns ctx's
// error (ErrQueueTimeout matching context.DeadlineExceeded when the deadline
// passed).
func (b *Bucket) WaitN(ctx context.Context, n int) error {
	r, err := b.Reserve(ctx, n)
	if err != nil {
		return err
	}
	d := r.Delay()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		_, _ = r.Cancel(ctx)
		return ctxError(ctx)
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
