// Package limiter holds sluice's rate limits: Bucket, a cluster-wide token
// bucket in Redis whose callers WAIT for their turn, served in the order they
// reserved across every replica; and KeyLimiter, a per-key limit that REJECTS
// at the edge (per user, per API key).
//
// # The bucket
//
// A Bucket of Limit{Rate, Burst, Period} holds at most Burst tokens and
// refills one token every Interval (Period/Rate, rounded up to a whole
// microsecond). It is kept in one Redis key per budget and implemented with
// GCRA, the virtual-scheduling form of a token bucket: the key holds the
// theoretical arrival time (TAT) of the next token, and every reservation is
// one atomic Lua script that moves it forward. Every Bucket of the same
// budget on the same Redis, in any number of processes, shares that state, so
// the bucket never grants more than Burst + Rate*W tokens in any window of
// length W, cluster-wide, and callers are served in the order they reserved.
//
// Bucket has three ways to take tokens, like golang.org/x/time/rate's Limiter
// (there is no Allow: use KeyLimiter to reject):
//
//   - Wait and WaitN block until the tokens are the caller's. If ctx has a
//     deadline that the earliest slot cannot meet, they fail at once with
//     ErrQueueTimeout and consume nothing.
//   - Reserve takes the tokens without waiting and returns a Reservation
//     saying when they may be used (TimeToAct, Delay). Cancel it if the
//     caller will not act: the tokens are given back when that can never
//     break the bound (it is still the latest reservation), else lost,
//     never spent twice.
//
// A caller acts no earlier than the slot Redis gave it: the wait the script
// names is counted from when its reply arrived, so time spent in the
// connection pool, on the network or behind a busy Redis only ever delays
// the caller. (A reply delayed more for one caller than for the next can
// bring their act times closer than one interval; over windows longer than
// that delay it does not show.)
//
// A Bucket has no useful zero value: make one with NewBucket. Buckets and
// KeyLimiters are safe for concurrent use by many goroutines.
//
// # Errors
//
// Errors are checked with errors.Is. ErrUnavailable marks a failure of Redis
// itself (unreachable, failing, not answering in time); test it first.
// ErrQueueTimeout means the caller's deadline cannot be met, and matches
// context.DeadlineExceeded too when that deadline passed. ErrCostExceedsBurst
// means the caller asked for more than the bucket holds.
//
// # Clock
//
// Time is Redis's: the scripts read TIME, and replicas only send durations
// (how long a caller can wait), so replica clocks never enter a decision.
// Redis TIME is wall-clock time. If the Redis host's clock steps backward,
// the bucket stalls for the size of the step (its TAT lies that far in the
// future); if it steps forward, the bucket refills early, by up to Burst
// tokens at once, as after any idle time. Run Redis on a host whose clock is
// slewed (NTP, chrony), not stepped.
package limiter
