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
