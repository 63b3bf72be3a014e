// Package semaphore is a counting semaphore of leases shared by every replica
// through Redis: at most Size holders at once, cluster-wide, served FIFO.
//
// A lease has a TTL in Redis time and renews itself while held, so the slot of
// a replica that dies comes back within the TTL. With Options.Rate set,
// Acquire also takes a token of the budget's token bucket in the same atomic
// script, at the moment the slot is granted: that is sluice's admission,
// which keeps both the vendor's concurrency limit and its rate.
//
//	sem, _ := semaphore.New(rdb, "openai", semaphore.Options{Size: 3, Rate: lim})
//	lease, err := sem.Acquire(ctx)      // waits in the shared FIFO queue
//	if err != nil { ... }               // see "Errors" below
//	defer lease.Release(ctx)            // shielded: runs even if ctx is done
//	callCtx, cancel := lease.Bind(ctx)  // ends if the lease is lost
//	defer cancel()
//
// # How it works
//
// Each decision is one Lua script run in Redis (acquire, release, renew),
// atomic on the node that owns the budget's hash slot. Callers that cannot be
// granted at once join a queue in Redis; only its head may be granted. When a
// slot frees, the script wakes the head on the channel of the one replica
// that owns it (each replica subscribes to its own channel only, with sharded
// pub/sub on a Redis Cluster of Redis 7 or later), so the cost of a wake-up
// does not grow with the number of replicas. A replica keeps all its queued
// callers alive with one heartbeat; the callers of a replica that died are
// dropped when they reach the head of the queue. Held leases are renewed in
// one call per replica every LeaseTTL/3. A replica's subscription is pinged
// when silent and replaced when a ping goes unanswered (a connection that a
// NAT or load balancer dropped without a word), and Check reports it as down
// meanwhile.
//
// # Errors
//
// Test in this order:
//
//   - errors.Is(err, ErrUnavailable): Redis is unreachable, failing or did
//     not answer (with ErrQueueTimeout too when it did not answer before the
//     caller's deadline: still a Redis problem first). Fail closed.
//   - errors.Is(err, ErrQueueTimeout): the call could not start before ctx's
//     deadline (it also matches context.DeadlineExceeded when the deadline
//     passed). Answer at once; do not retry it.
//   - errors.Is(err, context.Canceled): the caller went away.
//   - ErrNotAcquired (TryAcquire only) and ErrClosed.
//
// On every error nothing is held, and the caller's place in the queue is
// withdrawn.
//
// # What a Redis client needs
//
// Any go-redis retry setting is safe. A lease id is made by the client before
// the call, and the scripts recognise it: a call that go-redis sends again
// after a lost reply is answered "granted" again if the first run granted it
// (never queued a second time), and a lease's local validity is counted from
// the moment the first attempt was sent, with a margin of a tenth of the TTL,
// never from a later answer. An acquire that arrives after its caller gave up
// and withdrew it (delayed on another connection, or resent) finds a
// tombstone and is refused, within one minute of the withdrawal. For calls to
// end by their deadline when Redis hangs, use a client that honours context
// deadlines (go-redis Options.ContextTimeoutEnabled) or has short read and
// write timeouts.
//
// # Redis's clock
//
// Every instant comes from Redis TIME, never from a replica; replicas send
// only durations. TIME is the wall clock of the Redis host, so it can step.
// The scripts never let time go back: each uses the latest time any script of
// the budget used (kept in Redis). A backward step therefore holds time still
// until the clock catches up: leases and heartbeats do not expire and the
// bucket gives no new tokens, so admissions stall for at most the length of
// the step, and nothing is granted twice. A forward step larger than a
// lease's remaining life expires live leases: their slots may be granted
// again while the old holders still run (up to 2*Size in flight until each
// old holder's next renewal, within LeaseTTL/3, finds its lease lost and
// cancels its Context), and the bucket counts the step as refill time (up to
// Burst extra tokens at once). Keep Redis hosts on NTP with slewing, not
// stepping.
package semaphore
