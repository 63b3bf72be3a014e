package semaphore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Concurrent callers are answered exactly once each, with their own result,
// in fewer calls than callers; at most one call is ever in flight.
func TestBatcherCombinesAndAnswersEachCaller(t *testing.T) {
	var inFlight, maxInFlight, calls atomic.Int64
	release := make(chan struct{})
	b := &batcher[int, int]{timeout: time.Second, run: func(ctx context.Context, reqs []int) ([]int, error) {
		if n := inFlight.Add(1); n > maxInFlight.Load() {
			maxInFlight.Store(n)
		}
		if calls.Add(1) == 1 {
			<-release // hold the first call so the others pile up
		}
		out := make([]int, len(reqs))
		for i, r := range reqs {
			out[i] = r * 10
		}
		inFlight.Add(-1)
		return out, nil
	}}
	const n = 50
	var wg sync.WaitGroup
	var started sync.WaitGroup
	started.Add(n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			got, err := b.do(context.Background(), i)
			if err != nil || got != i*10 {
				t.Errorf("caller %d got %d, %v", i, got, err)
			}
		}()
	}
	started.Wait()
	close(release)
	wg.Wait()
	if maxInFlight.Load() != 1 {
		t.Fatalf("%d calls in flight at once", maxInFlight.Load())
	}
	if c := calls.Load(); c >= n {
		t.Fatalf("%d calls for %d callers: nothing combined", c, n)
	}
	t.Logf("%d callers in %d calls", n, calls.Load())
}

// A queued caller whose context ends leaves at once, even while its batch is
// in flight and Redis does not answer; a request dropped before its batch
// was sent is never sent; the others are still served.
func TestBatcherCallersLeaveOnTheirDeadline(t *testing.T) {
	firstIn, inflightIn := make(chan struct{}), make(chan struct{})
	releaseFirst, releaseInflight := make(chan struct{}), make(chan struct{})
	var sent sync.Map
	b := &batcher[string, string]{timeout: time.Minute, run: func(ctx context.Context, reqs []string) ([]string, error) {
		for _, r := range reqs {
			sent.Store(r, true)
			switch r {
			case "first":
				close(firstIn)
				<-releaseFirst
			case "inflight":
				close(inflightIn)
				<-releaseInflight // Redis hangs
			}
		}
		return reqs, nil
	}}
	abandoned := make(chan string, 4)
	b.abandoned = func(r string) {
		if _, answered := sent.Load(r + "-answered"); !answered {
			t.Errorf("%s undone before its batch was answered", r)
		}
		abandoned <- r
	}
	go func() { _, _ = b.do(context.Background(), "first") }()
	<-firstIn
	dropCtx, dropCancel := context.WithCancel(context.Background())
	dropped := make(chan error)
	go func() { _, err := b.do(dropCtx, "dropped"); dropped <- err }()
	inflightCtx, inflightCancel := context.WithCancel(context.Background())
	inflight := make(chan error)
	go func() { _, err := b.do(inflightCtx, "inflight"); inflight <- err }()
	other := make(chan string)
	go func() { r, _ := b.do(context.Background(), "other"); other <- r }()

	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return len(b.pending) == 3 })
	dropCancel()
	if err := <-dropped; !errors.Is(err, context.Canceled) || !errors.Is(err, errNotSent) || errors.Is(err, errLeft) {
		t.Fatalf("caller cancelled while queued: %v", err)
	}
	close(releaseFirst)
	<-inflightIn
	inflightCancel()
	if err := <-inflight; !errors.Is(err, context.Canceled) || !errors.Is(err, errLeft) {
		t.Fatalf("caller whose batch hangs: %v", err)
	}
	sent.Store("inflight-answered", true)
	close(releaseInflight)
	if r := <-abandoned; r != "inflight" {
		t.Fatalf("abandoned %q, want the in-flight request undone after its answer", r)
	}
	if r := <-other; r != "other" {
		t.Fatalf("other got %q", r)
	}
	if _, ok := sent.Load("dropped"); ok {
		t.Fatal("a request dropped before its batch was sent anyway")
	}
	select {
	case r := <-abandoned:
		t.Fatalf("%q undone although it was never sent", r)
	default:
	}
}
