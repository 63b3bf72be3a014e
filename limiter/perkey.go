package limiter

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
)

// KeyLimiter enforces a REJECT limit per key (per user, per API key) with
// GCRA, using github.com/go-redis/redis_rate. It never waits: a request over
// the limit is told at once when it may retry. Use it at the edge; use Bucket
// for the vendor budget, where callers wait instead.
//
// Keys are hashed before they reach Redis, so user-controlled strings never
// become raw Redis keys. A KeyLimiter is safe for concurrent use.
type KeyLimiter struct {
	rl     *redis_rate.Limiter
	limit  redis_rate.Limit
	prefix string
}

// NewKeyLimiter returns a KeyLimiter for lim whose keys live under the
// namespace of budget. It returns an error if lim is not valid.
func NewKeyLimiter(rdb redis.UniversalClient, budget string, lim Limit) (*KeyLimiter, error) {
	if err := lim.Validate(); err != nil {
		return nil, err
	}
	return &KeyLimiter{
		rl:     redis_rate.NewLimiter(rdb),
		limit:  redis_rate.Limit{Rate: lim.Rate, Burst: lim.Burst, Period: lim.Period},
		prefix: redisstate.For(budget).User,
	}, nil
}

// Decision is the outcome of KeyLimiter.Allow, with what an HTTP handler needs
// for its Retry-After and RateLimit headers.
type Decision struct {
	Allowed bool
	// Limit is the configured limit.
	Limit Limit
	// Remaining is how many more requests would be allowed right now.
	Remaining int
	// RetryAfter is how long to wait before the next request can be
	// allowed; zero when Allowed.
	RetryAfter time.Duration
	// ResetAfter is how long until the limiter is back to a full burst.
	ResetAfter time.Duration
}

// Allow takes one request for key. The key is hashed (SHA-256) before use.
// A failure of Redis is an error matching ErrUnavailable; nothing is taken.
func (k *KeyLimiter) Allow(ctx context.Context, key string) (Decision, error) {
	res, err := k.rl.Allow(ctx, k.prefix+redisstate.HashKey(key), k.limit)
	if err != nil {
		return Decision{}, fmt.Errorf("%w: per-key allow: %w", ErrUnavailable, err)
	}
	d := Decision{
		Allowed:    res.Allowed > 0,
		Limit:      Limit{Rate: k.limit.Rate, Burst: k.limit.Burst, Period: k.limit.Period},
		Remaining:  res.Remaining,
		ResetAfter: max(res.ResetAfter, 0),
	}
	if !d.Allowed {
		d.RetryAfter = max(res.RetryAfter, 0)
	}
	return d, nil
}

// SetHeaders writes the IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers)
// and, when the request was rejected, Retry-After, rounded up to whole seconds
// so a client that honours it never comes back too early.
func (d Decision) SetHeaders(h http.Header) {
	window := int(math.Ceil(d.Limit.Period.Seconds()))
	h.Set("RateLimit-Limit", strconv.Itoa(d.Limit.Burst))
	h.Set("RateLimit-Remaining", strconv.Itoa(d.Remaining))
	h.Set("RateLimit-Reset", strconv.Itoa(ceilSeconds(d.ResetAfter)))
	h.Set("RateLimit-Policy", fmt.Sprintf("%d;w=%d;burst=%d", d.Limit.Rate, window, d.Limit.Burst))
	if !d.Allowed {
		h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(d.RetryAfter))))
	}
}

func ceilSeconds(d time.Duration) int { return int(math.Ceil(d.Seconds())) }
