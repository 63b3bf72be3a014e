package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/limiter"
)

// Callers wait for their turn; one that cannot be served before its deadline
// fails at once instead of waiting it out. (The example runs on an
// in-process Redis; use your real one.)
func ExampleBucket_Wait() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	lim, _ := limiter.ParseLimit("1/h") // one call per hour, burst 1
	bucket, _ := limiter.NewBucket(rdb, "vendor-x", lim)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println(bucket.Wait(ctx))
	err := bucket.Wait(ctx)
	fmt.Println(errors.Is(err, limiter.ErrQueueTimeout), ctx.Err())
	// Output:
	// <nil>
	// true <nil>
}

// Per-user limits reject instead of waiting, with what a handler needs for
// Retry-After.
func ExampleKeyLimiter_Allow() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	kl, _ := limiter.NewKeyLimiter(rdb, "default", limiter.Limit{Rate: 1, Burst: 1, Period: time.Minute})
	ctx := context.Background()
	first, _ := kl.Allow(ctx, "client-key-1")
	second, _ := kl.Allow(ctx, "client-key-1")
	fmt.Println(first.Allowed, second.Allowed, second.RetryAfter > 0)
	// Output: true false true
}

// Reserve takes tokens without waiting and says when they may be used; a
// caller that will not act cancels its reservation.
func ExampleBucket_Reserve() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	bucket, _ := limiter.NewBucket(rdb, "vendor-x", limiter.PerMinute(2)) // 2 per minute, burst 2
	ctx := context.Background()
	for range 3 {
		r, _ := bucket.Reserve(ctx, 1)
		fmt.Println(r.Delay().Round(10 * time.Second))
	}
	r, _ := bucket.Reserve(ctx, 1)
	if r.Delay() > time.Second { // too long to wait: give the tokens back
		back, _ := r.Cancel(ctx)
		fmt.Println("gave back:", back)
	}
	// Output:
	// 0s
	// 0s
	// 30s
	// gave back: true
}

// A rate as people write it; ParseLimit gives burst 1, the strictest.
func ExampleParseLimit() {
	lim, _ := limiter.ParseLimit("500/m")
	fmt.Println(lim, lim.Interval())
	lim.Burst = 20
	fmt.Println(lim)
	// Output:
	// 500/m burst 1 120ms
	// 500/m burst 20
}
