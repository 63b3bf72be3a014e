package semaphore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

// At most two calls in flight and at most 50 per second, across every
// replica that shares the budget: each worker admits, calls, releases.
// (The example runs on an in-process Redis; use your real one.)
func Example_admission() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	sem, err := semaphore.New(rdb, "vendor-x", semaphore.Options{
		Size: 2,
		Rate: limiter.Limit{Rate: 50, Burst: 2, Period: time.Second},
	})
	if err != nil {
		panic(err)
	}
	defer sem.Close()

	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The queue deadline: give up if the call cannot START in time.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			lease, err := sem.Acquire(ctx)
			if err != nil {
				fmt.Println("not admitted:", err)
				return
			}
			// Release is shielded: it runs even if ctx is cancelled.
			defer lease.Release(ctx)
			// Run the vendor call under a context bound to the lease:
			// losing the lease aborts the call.
			callCtx, cancel := lease.Bind(ctx)
			defer cancel()
			_ = callCtx // e.g. http.NewRequestWithContext(callCtx, ...)
			mu.Lock()
			done++
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Println("calls made:", done)
	// Output: calls made: 6
}

func ExampleSemaphore_TryAcquire() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	sem, _ := semaphore.New(rdb, "jobs", semaphore.Options{Size: 1})
	defer sem.Close()

	ctx := context.Background()
	first, _ := sem.TryAcquire(ctx)
	_, err := sem.TryAcquire(ctx)
	fmt.Println(err)
	_ = first.Release(ctx)
	second, err := sem.TryAcquire(ctx)
	fmt.Println(err, second.Held())
	_ = second.Release(ctx)
	// Output:
	// semaphore: not acquired
	// <nil> true
}

// A request's work runs under a context that ends with the request AND with
// the lease: when the lease is lost (Redis no longer has it, so another
// replica may have the slot), the work is cancelled with ErrLeaseLost as
// the cause. Test the errors of Acquire in the order shown.
func ExampleLease_Bind() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	sem, _ := semaphore.New(rdb, "vendor-y", semaphore.Options{Size: 1, LeaseTTL: time.Second})
	defer sem.Close()

	reqCtx, cancelReq := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelReq()
	lease, err := sem.Acquire(reqCtx)
	switch {
	case errors.Is(err, semaphore.ErrUnavailable):
		fmt.Println("503: Redis is down") // fail closed
		return
	case errors.Is(err, semaphore.ErrQueueTimeout):
		fmt.Println("503: cannot start in time") // never retried
		return
	case err != nil:
		fmt.Println("client went away:", err)
		return
	}
	defer lease.Release(reqCtx)

	callCtx, cancel := lease.Bind(reqCtx)
	defer cancel()
	// Redis's clock jumps an hour ahead: the lease expires in Redis.
	mr.SetTime(time.Now().Add(time.Hour))
	<-callCtx.Done() // at the next renewal, within LeaseTTL/3
	fmt.Println(context.Cause(callCtx))
	// Output: semaphore: lease lost
}
