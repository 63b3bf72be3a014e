package server

import (
	"context"
	"sync"
	"time"
)

// tracker counts the work of a Server that must end before its admitter and
// its Redis client close: requests being handled, leases held through their
// cancel grace, store probes. Its zero value is ready to use.
type tracker struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil before the first add
}

func (t *tracker) add() {
	t.mu.Lock()
	if t.n == 0 {
		t.idle = make(chan struct{})
	}
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	t.n--
	if t.n == 0 {
		close(t.idle)
	}
	t.mu.Unlock()
}

// goTracked runs f in a goroutine counted as work.
func (t *tracker) goTracked(f func()) {
	t.add()
	go func() {
		defer t.done()
		f()
	}()
}

// count returns the work in progress.
func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// wait waits up to d for the work in progress to end, and reports whether
// it did.
func (t *tracker) wait(d time.Duration) bool {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return true
	}
	idle := t.idle
	t.mu.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-idle:
		return true
	case <-timer.C:
		return false
	}
}

// probeTimeout bounds one probe of the store.
const probeTimeout = time.Second

// storeProbe tells, when a request's queue deadline passes, whether the
// coordination store was answering then. A queue timeout of a store that
// answers means the vendor budget is saturated (503 queue_timeout); one of a
// store that does not answer means the gateway cannot admit at all (503
// backend_unavailable). The admitter cannot tell them apart: a waiter whose
// deadline passes while Redis is silent just sees its deadline pass.
//
// So a request still waiting shortly before its queue deadline (probeLead)
// starts a probe, Admitter.Check, unless one is running or started within
// the lead; at the deadline, the store answered if a probe succeeded since
// one lead before that moment. A probe costs one script call; there is at
// most one at a time per gateway, one per lead while requests time out, and
// none at all while requests are admitted in time. The answer comes at the
// deadline, never later.
type storeProbe struct {
	check func(context.Context) error
	work  *tracker

	mu      sync.Mutex
	running bool
	started time.Time // of the last probe
	lastOK  time.Time // when the last successful probe ended
}

// probeLead is how long before the queue deadline the probe starts: long
// enough for a Redis round trip under load, short enough that a store that
// has not answered within it is not answering.
func probeLead(queueTimeout time.Duration) time.Duration {
	return min(queueTimeout/4, 250*time.Millisecond)
}

// start begins a probe unless one is running or one started less than
// fresh ago.
func (p *storeProbe) start(fresh time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running || time.Since(p.started) < fresh {
		return
	}
	p.running, p.started = true, time.Now()
	p.work.goTracked(func() {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		err := p.check(ctx)
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.running = false
		if err == nil {
			p.lastOK = time.Now()
		}
	})
}

// answeredSince reports whether a probe succeeded at or after t.
func (p *storeProbe) answeredSince(t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.lastOK.Before(t)
}
