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

// A caller whose context ends while it waits for a batch leaves without its
// request being sent; the others are still served.
func TestBatcherDropsCancelledWaiters(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var sent sync.Map
	b := &batcher[string, string]{timeout: time.Second, run: func(ctx context.Context, reqs []string) ([]string, error) {
		for _, r := range reqs {
			sent.Store(r, true)
		}
		if _, first := sent.Load("first"); first && len(reqs) == 1 && reqs[0] == "first" {
			close(entered)
			<-release
		}
		return reqs, nil
	}}
	go func() { _, _ = b.do(context.Background(), "first") }()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := b.do(ctx, "cancelled"); done <- err }()
	other := make(chan string)
	go func() { r, _ := b.do(context.Background(), "other"); other <- r }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	close(release)
	if r := <-other; r != "other" {
		t.Fatalf("other got %q", r)
	}
	if _, ok := sent.Load("cancelled"); ok {
		t.Fatal("a request dropped before its batch was sent anyway")
	}
}
