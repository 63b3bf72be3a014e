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
	// ErrQueueTimeout means the earliest slot the bucket can give is later
	// than the caller's deadline. It is returned at once, without waiting,
	// and the bucket is left unchanged.
	ErrQueueTimeout = errors.New("limiter: queue timeout")
	// ErrCostExceedsBurst means a caller asked for more tokens than the
	// bucket can ever hold.
	ErrCostExceedsBurst = errors.New("limiter: cost exceeds burst")
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

// Reservation is a claim on tokens of a Bucket: the holder may act after
// Delay. Cancel it if it will not act.
type Reservation struct {
	b     *Bucket
	n     int
	tat   int64
	delay time.Duration
	actAt time.Time
	done  atomic.Bool
}

// Delay is how long the holder had to wait, from the moment the reservation
// was made, before acting.
func (r *Reservation) Delay() time.Duration { return r.delay }

// TimeToAct is the local time from which the holder may act.
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
		return false, fmt.Errorf("limiter: cancel: %w", err)
	}
	return back, nil
}

// shieldTimeout bounds cleanup that must run after the caller gave up.
const shieldTimeout = 2 * time.Second

// Reserve reserves n tokens for a caller that can wait at most maxWait
// (negative: no limit). If the earliest slot is later than that, it returns
// ErrQueueTimeout at once and takes nothing.
func (b *Bucket) Reserve(ctx context.Context, n int, maxWait time.Duration) (*Reservation, error) {
	if n > b.limit.Burst {
		return nil, fmt.Errorf("%w: %d > %d", ErrCostExceedsBurst, n, b.limit.Burst)
	}
	if n <= 0 {
		return nil, fmt.Errorf("limiter: cost must be positive, got %d", n)
	}
	start := time.Now()
	res, err := b.keys.Reserve(ctx, b.rdb, b.interval, b.limit.Burst, n, maxWait)
	if err != nil {
		return nil, fmt.Errorf("limiter: reserve: %w", err)
	}
	delay := res.Wait
	if !res.OK {
		return nil, fmt.Errorf("%w: next slot in %s, can wait %s", ErrQueueTimeout, delay, maxWait)
	}
	return &Reservation{b: b, n: n, tat: res.TAT, delay: delay, actAt: start.Add(delay)}, nil
}

// Wait is WaitN(ctx, 1).
func (b *Bucket) Wait(ctx context.Context) error { return b.WaitN(ctx, 1) }

// WaitN blocks until n tokens are the caller's, or fails. If ctx has a
// deadline that the earliest slot cannot meet, it returns ErrQueueTimeout at
// once, consuming nothing. If ctx ends while waiting, the tokens are given
// back when that is safe (see Reservation.Cancel) and ctx's error is returned.
func (b *Bucket) WaitN(ctx context.Context, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	maxWait := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		maxWait = max(time.Until(dl), 0)
	}
	r, err := b.Reserve(ctx, n, maxWait)
	if err != nil {
		return err
	}
	d := time.Until(r.actAt)
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
		return ctx.Err()
	}
}
