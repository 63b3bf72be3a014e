package semaphore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// batcher combines the calls that goroutines of one replica make at the same
// time into one script call: while a call is in flight, newcomers wait, and
// the next call carries all of them. Under load this removes round trips and
// the Redis work each script call costs; alone, a caller's request goes out
// at once.
//
// A caller that leaves when its context ends while its request is in flight
// does not know what became of it: the abandoned hook undoes it, after the
// answer. A caller that leaves before its request was sent is told so
// (errNotSent): nothing of that request reached Redis.
type batcher[Req, Res any] struct {
	// run executes one batch; it returns one result per request, in order.
	run func(ctx context.Context, reqs []Req) ([]Res, error)
	// timeout bounds one batch call, whatever its callers' deadlines.
	timeout time.Duration
	// abandoned, if set, is called with the request of a caller that left
	// while its batch was in flight, once that batch has been answered:
	// only then can undoing the request not run before the request itself.
	abandoned func(Req)

	mu      sync.Mutex
	pending []*batchCall[Req, Res]
	busy    bool // the loop is running
}

type batchCall[Req, Res any] struct {
	req      Req
	deadline time.Time // zero: none
	res      Res
	err      error
	done     chan struct{} // closed when answered
}

// do sends req in the next batch and returns its result, or ctx's error if
// ctx ends first (the request may or may not have reached Redis).
//
// A caller that finds no call in flight sends its request at once, alone,
// in its own goroutine (no hand-off latency); the requests that arrive
// meanwhile go out together from a goroutine of the batcher, so that each
// of those callers can leave when its context ends even if Redis does not
// answer. (The first caller relies on the client honouring ctx's deadline:
// go-redis's ContextTimeoutEnabled, or a short ReadTimeout.)
func (b *batcher[Req, Res]) do(ctx context.Context, req Req) (Res, error) {
	c := &batchCall[Req, Res]{req: req, done: make(chan struct{})}
	c.deadline, _ = ctx.Deadline()
	b.mu.Lock()
	if !b.busy {
		b.busy = true
		b.mu.Unlock()
		b.runBatch([]*batchCall[Req, Res]{c})
		b.mu.Lock()
		if len(b.pending) == 0 {
			b.busy = false
		} else {
			go b.loop()
		}
		b.mu.Unlock()
		return c.res, c.err
	}
	b.pending = append(b.pending, c)
	b.mu.Unlock()
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		var zero Res
		if b.drop(c) {
			return zero, fmt.Errorf("%w: %w", errNotSent, ctx.Err())
		}
		if b.abandoned != nil {
			go func() {
				<-c.done
				b.abandoned(c.req)
			}()
		}
		return zero, fmt.Errorf("%w: %w", errLeft, ctx.Err())
	}
}

// errLeft marks the error of a caller that left while its request was in
// flight, before the answer; errNotSent, of a caller that left while its
// request still waited for a batch: it was never sent.
var (
	errLeft    = errors.New("semaphore: caller left before the answer")
	errNotSent = errors.New("semaphore: caller left before its request was sent")
)

// drop removes c if it is still waiting for a batch, and reports whether it
// did (then the request was never sent).
func (b *batcher[Req, Res]) drop(c *batchCall[Req, Res]) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range b.pending {
		if p == c {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			return true
		}
	}
	return false
}

// loop runs batches until no request is waiting.
func (b *batcher[Req, Res]) loop() {
	for {
		b.mu.Lock()
		batch := b.pending
		b.pending = nil
		if len(batch) == 0 {
			b.busy = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.runBatch(batch)
	}
}

func (b *batcher[Req, Res]) runBatch(batch []*batchCall[Req, Res]) {
	reqs := make([]Req, len(batch))
	var latest time.Time
	patient := false // some caller has no deadline
	for i, c := range batch {
		reqs[i] = c.req
		if c.deadline.IsZero() {
			patient = true
		} else if c.deadline.After(latest) {
			latest = c.deadline
		}
	}
	// The call lives as long as its most patient caller, within timeout.
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	if !patient {
		var cancel2 context.CancelFunc
		ctx, cancel2 = context.WithDeadline(ctx, latest)
		defer cancel2()
	}
	res, err := b.run(ctx, reqs)
	for i, c := range batch {
		if err == nil {
			c.res = res[i]
		}
		c.err = err
		close(c.done)
	}
}
