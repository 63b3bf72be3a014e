// Package redisstate is sluice's state in Redis, in one place: the names of
// a budget's keys and channels, the Lua scripts (from the top-level scripts
// folder) and the packing of their arguments and replies. The limiter and
// semaphore packages, the gateway and every test name keys through it, so
// the layout can change here alone.
//
// Every key of one budget starts with Prefix(budget), "sluice:{<budget>}:".
// The braces make the budget a Redis Cluster hash tag: all keys (and the
// sharded wake channels) of a budget live in one slot, so each script runs
// atomically on one node, unchanged on a cluster.
package redisstate

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"time"
)

// Keys names the Redis keys and channels of one budget.
type Keys struct {
	// Prefix is the namespace of the budget, "sluice:{<budget>}:".
	Prefix string
	// Bucket is the token bucket: a string holding its theoretical
	// arrival time (GCRA) in microseconds of Redis time.
	Bucket string
	// Leases is the semaphore's holders: a sorted set lease id -> expiry.
	Leases string
	// Queue is the semaphore's FIFO queue: a sorted set waiter id -> ticket.
	Queue string
	// Replicas holds the heartbeats of replicas with waiters: a sorted set
	// replica id -> expiry. A waiter id is "<replica>.<random>".
	Replicas string
	// Gone holds tombstones of released or withdrawn ids: a sorted set
	// id -> expiry, which acquire.lua refuses.
	Gone string
	// Clock is the latest Redis time a script of the budget used: decisions
	// never go back before it.
	Clock string
	// Grants counts the grants of the budget's semaphore, cluster-wide: an
	// integer that only grows while the key lives (its rate is the request
	// rate actually granted). Read by internal/status.
	Grants string
	// User is the prefix of the per-key limits of limiter.KeyLimiter; the
	// key that follows it is always hashed (HashKey).
	User string
}

// For returns the keys of budget.
func For(budget string) Keys {
	p := Prefix(budget)
	return Keys{
		Prefix:   p,
		Bucket:   p + "bucket",
		Leases:   p + "leases",
		Queue:    p + "queue",
		Replicas: p + "replicas",
		Gone:     p + "gone",
		Clock:    p + "clock",
		Grants:   p + "grants",
		User:     p + "user:",
	}
}

// WakePrefix is the prefix of the budget's wake channels: the channel of a
// replica is WakePrefix followed by the replica's id.
func (k Keys) WakePrefix() string { return k.Prefix + "w:" }

// WakeChannel is the channel on which the scripts wake replica's waiters.
func (k Keys) WakeChannel(replica string) string { return k.WakePrefix() + replica }

// Prefix returns the namespace of every key of a budget, "sluice:{<budget>}:".
// An empty budget is "default". A budget that could break the hash tag
// (braces, bytes outside printable ASCII) or is longer than 64 bytes is
// replaced by "h-" and its HashKey.
func Prefix(budget string) string {
	if budget == "" {
		budget = "default"
	}
	for _, r := range budget {
		if r == '{' || r == '}' || r < ' ' || r > '~' {
			budget = "h-" + HashKey(budget)
			break
		}
	}
	if len(budget) > 64 {
		budget = "h-" + HashKey(budget)
	}
	return "sluice:{" + budget + "}:"
}

// HashKey returns the first 16 bytes of the SHA-256 of s, in hex (32
// characters): the only form in which user-controlled strings enter Redis
// keys (or logs).
func HashKey(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// IntervalMicros is the time one token of a rate of rate per period takes to
// refill, in whole microseconds rounded up (so the rate is never exceeded),
// as the scripts use it.
func IntervalMicros(rate int, period time.Duration) int64 {
	return int64(math.Ceil(float64(period.Microseconds()) / float64(rate)))
}
