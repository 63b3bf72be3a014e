package semaphore

import (
	"context"
	"sync"
	"time"
)

// batcher combines the calls that goroutines of one replica make at the same
// time into one script call: while a call is in flight, newcomers wait, and
// the next call carries all of them. An uncontended caller runs its call at
// once, alone: batching adds no latency, it only removes round trips (and the
// Redis work a script call costs) under load.
//
// The caller that finds no call in flight leads: it runs batches until its
// own request is answered, then hands the lead to the oldest waiting request,
// so no caller serves others for long.
type batcher[Req, Res any] struct {
	// run executes one batch; it returns one result per request, in order.
	run func(ctx context.Context, reqs []Req) ([]Res, error)
	// timeout bounds one batch call, whatever its callers' contexts.
	timeout time.Duration

	mu      sync.Mutex
	pending []*batchCall[Req, Res]
	busy    bool // a leader is running batches
}

type batchCall[Req, Res any] struct {
	req      Req
	deadline time.Time // zero: none
	res      Res
	err      error
	done     chan struct{} // closed when answered
	lead     chan struct{} // closed when handed the lead
}

// do runs req in the next batch and returns its result. If ctx ends while req
// is still waiting for a batch, it is dropped and ctx's error returned; once
// its batch is in flight, do waits for the answer (bounded by timeout),
// because only the answer tells whether Redis acted on it.
func (b *batcher[Req, Res]) do(ctx context.Context, req Req) (Res, error) {
	c := &batchCall[Req, Res]{req: req, done: make(chan struct{}), lead: make(chan struct{})}
	c.deadline, _ = ctx.Deadline()
	b.mu.Lock()
	b.pending = append(b.pending, c)
	leader := !b.busy
	b.busy = true
	b.mu.Unlock()
	if !leader {
		select {
		case <-c.done:
			return c.res, c.err
		case <-c.lead:
		case <-ctx.Done():
			if b.drop(c) {
				var zero Res
				return zero, ctx.Err()
			}
			select { // in flight, or just handed the lead
			case <-c.done:
				return c.res, c.err
			case <-c.lead:
			}
		}
	}
	b.leadUntil(ctx, c)
	return c.res, c.err
}

// drop removes c if it is still waiting for a batch and was not handed the
// lead (then it must lead: the others wait on it).
func (b *batcher[Req, Res]) drop(c *batchCall[Req, Res]) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if isClosed(c.lead) {
		return false
	}
	for i, p := range b.pending {
		if p == c {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			return true
		}
	}
	return false
}

// leadUntil runs batches until own is answered, then passes the lead on.
func (b *batcher[Req, Res]) leadUntil(ctx context.Context, own *batchCall[Req, Res]) {
	for !isClosed(own.done) {
		b.mu.Lock()
		batch := b.pending
		b.pending = nil
		b.mu.Unlock()
		b.runBatch(ctx, batch)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) == 0 {
		b.busy = false
		return
	}
	close(b.pending[0].lead)
}

func (b *batcher[Req, Res]) runBatch(ctx context.Context, batch []*batchCall[Req, Res]) {
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
	// The batch serves all its callers: it is not cancelled with the
	// leader's context, and lives as long as the most patient caller.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	defer cancel()
	if !patient {
		var cancel2 context.CancelFunc
		bctx, cancel2 = context.WithDeadline(bctx, latest)
		defer cancel2()
	}
	res, err := b.run(bctx, reqs)
	for i, c := range batch {
		if err == nil {
			c.res = res[i]
		}
		c.err = err
		close(c.done)
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
