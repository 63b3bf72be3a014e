package redisstate

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/scripts"
)

// The scripts, each common.lua followed by its own file. Run with
// Script.Run: EVALSHA, falling back to EVAL when Redis answers NOSCRIPT
// (after a restart or SCRIPT FLUSH).
var (
	reserveScript   = load("reserve.lua")
	cancelScript    = load("cancel.lua")
	acquireScript   = load("acquire.lua")
	releaseScript   = load("release.lua")
	keepaliveScript = load("keepalive.lua")
)

// Scripts lists every script, e.g. to preload them (SCRIPT LOAD) or check
// that a server runs them.
func Scripts() []*redis.Script {
	return []*redis.Script{reserveScript, cancelScript, acquireScript, releaseScript, keepaliveScript}
}

func load(name string) *redis.Script {
	common, err := scripts.FS.ReadFile("common.lua")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	body, err := scripts.FS.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return redis.NewScript(string(common) + "\n" + string(body))
}

// us is d in whole microseconds, as the scripts count time.
func us(d time.Duration) int64 { return d.Microseconds() }

// Reservation is the reply of reserve.lua.
type Reservation struct {
	// OK is false when the earliest slot was later than the caller could
	// wait: then nothing was taken.
	OK bool
	// Wait is how long after the script ran the tokens may be used (or,
	// when not OK, the earliest slot).
	Wait time.Duration
	// TAT is the bucket's theoretical arrival time after the reservation,
	// in microseconds: it identifies the reservation for Cancel.
	TAT int64
}

// Reserve takes n tokens of the bucket of interval microseconds per token
// and burst, for a caller that can wait maxWait (negative: no limit).
func (k Keys) Reserve(ctx context.Context, rdb redis.Scripter, interval int64, burst, n int, maxWait time.Duration) (Reservation, error) {
	maxUS := int64(-1)
	if maxWait >= 0 {
		maxUS = us(maxWait)
	}
	res, err := reserveScript.Run(ctx, rdb, []string{k.Bucket, k.Clock, k.Grants}, interval, burst, n, maxUS).Int64Slice()
	if err != nil {
		return Reservation{}, err
	}
	if len(res) != 3 {
		return Reservation{}, fmt.Errorf("reserve.lua: unexpected reply %v", res)
	}
	return Reservation{OK: res[0] == 1, Wait: time.Duration(res[1]) * time.Microsecond, TAT: res[2]}, nil
}

// Cancel gives back the reservation of n tokens that left the bucket at tat,
// if it is still the latest; it reports whether it did.
func (k Keys) Cancel(ctx context.Context, rdb redis.Scripter, interval int64, n int, tat int64) (bool, error) {
	v, err := cancelScript.Run(ctx, rdb, []string{k.Bucket, k.Clock, k.Grants}, interval, n, tat).Int()
	return v == 1, err
}

// TombstoneTTL is how long release.lua remembers a released or withdrawn id,
// refusing an acquire of it that arrives late.
const TombstoneTTL = time.Minute

// Semaphore is what the semaphore scripts of one budget need besides the
// ids: the keys and the configuration of the calling replica.
//
// Slots are handed over: a script that frees a slot grants it at once to the
// head of the queue and publishes a HandOff on the channel of the replica
// that owns the head; a head that must wait for a token gets a wake-up: it
// should ask again.
type Semaphore struct {
	Keys Keys
	// Size is the number of slots.
	Size int
	// LeaseTTL is how long a lease lives in Redis without renewal.
	LeaseTTL time.Duration
	// WaiterTTL is how long a replica's heartbeat keeps its waiters.
	WaiterTTL time.Duration
	// Interval is the bucket's microseconds per token, 0 for no rate.
	Interval int64
	// Burst is the bucket's burst (with Interval).
	Burst int
	// Sharded makes the scripts wake with SPUBLISH (Redis Cluster 7+,
	// subscribers use SSUBSCRIBE) instead of PUBLISH.
	Sharded bool
}

// keys and args are the KEYS and first ARGV every semaphore script takes
// (see semaphore_state in common.lua), with room for n more arguments.
func (s *Semaphore) keys() []string {
	k := s.Keys
	return []string{k.Leases, k.Queue, k.Replicas, k.Gone, k.Clock, k.Bucket, k.Grants}
}

func (s *Semaphore) args(n int) []any {
	pub := "PUBLISH"
	if s.Sharded {
		pub = "SPUBLISH"
	}
	args := make([]any, 0, 7+n)
	return append(args, s.Size, us(s.LeaseTTL), us(s.WaiterTTL), s.Interval, s.Burst, s.Keys.WakePrefix(), pub)
}

// Status is the outcome of one acquire request.
type Status int

// The statuses of acquire.lua.
const (
	// Queued: the caller is in the queue; see the Reason.
	Queued Status = 0
	// Granted: the caller holds a lease (and a token).
	Granted Status = 1
	// TooLate: the next token comes after the caller's deadline; the
	// caller left the queue and holds nothing.
	TooLate Status = -1
	// Busy: a try request found no free slot (or others ahead, or no
	// token); nothing was stored.
	Busy Status = -2
	// Gone: the id was released or withdrawn before the request ran;
	// nothing was stored.
	Gone Status = -3
)

// Reason says why a request is Queued (or Busy, or TooLate).
type Reason int

// The reasons of acquire.lua.
const (
	// Ahead: others are ahead in the queue; wait to be woken.
	Ahead Reason = 1
	// Full: no slot is free; Hint is the time until the first lease expires.
	Full Reason = 2
	// NoToken: the bucket has no token yet; Hint is the time until it has.
	NoToken Reason = 3
)

// AcquireRequest is one caller's request in a batch of acquire.lua. Every
// request of a batch comes from one replica.
type AcquireRequest struct {
	// ID is the lease id, "<replica>.<random>", made by the client.
	ID string
	// MaxWait is how long the caller can still wait; negative: no limit.
	MaxWait time.Duration
	// Try takes a free slot or nothing, never queues.
	Try bool
}

// AcquireReply is the answer to one AcquireRequest.
type AcquireReply struct {
	Status Status
	Reason Reason
	// Hint is how long to wait before asking again (Full, NoToken), or
	// until the token (TooLate).
	Hint time.Duration
	// Left is how long a granted lease lives in Redis from when the script
	// ran (the full LeaseTTL for a new grant, less for a repeat).
	Left time.Duration
	// GrantedAt is the Redis time of the grant, in microseconds.
	GrantedAt int64
}

// Acquire runs acquire.lua for a batch of requests; one reply each.
func (s *Semaphore) Acquire(ctx context.Context, rdb redis.Scripter, reqs []AcquireRequest) ([]AcquireReply, error) {
	args := s.args(3 * len(reqs))
	for _, r := range reqs {
		mode, maxWait := "wait", int64(-1)
		if r.Try {
			mode = "try"
		}
		if r.MaxWait >= 0 {
			maxWait = us(r.MaxWait)
		}
		args = append(args, r.ID, maxWait, mode)
	}
	flat, err := acquireScript.Run(ctx, rdb, s.keys(), args...).Int64Slice()
	if err != nil {
		return nil, err
	}
	if len(flat) != 4*len(reqs) {
		return nil, fmt.Errorf("acquire.lua: unexpected reply %v", flat)
	}
	out := make([]AcquireReply, len(reqs))
	for i := range out {
		f := flat[4*i : 4*i+4]
		r := AcquireReply{Status: Status(f[0]), Reason: Reason(f[1])}
		if r.Status == Granted {
			r.Left = time.Duration(f[2]) * time.Microsecond
			r.GrantedAt = f[3]
		} else {
			r.Hint = time.Duration(f[2]) * time.Microsecond
		}
		out[i] = r
	}
	return out, nil
}

// Release runs release.lua: it releases the leases and withdraws the waiters
// of ids, leaves a tombstone for each, and serves the queue with the slots
// that freed. It returns how many leases it released.
func (s *Semaphore) Release(ctx context.Context, rdb redis.Scripter, ids []string) (int, error) {
	args := append(s.args(1+len(ids)), us(TombstoneTTL))
	for _, id := range ids {
		args = append(args, id)
	}
	return releaseScript.Run(ctx, rdb, s.keys(), args...).Int()
}

// Keepalive runs keepalive.lua: it renews leases and, unless replica is "",
// the replica's heartbeat, and serves the queue with slots that expired. It returns the leases Redis no longer had, and
// whether the replica's heartbeat had expired (its waiters may have been
// dropped).
func (s *Semaphore) Keepalive(ctx context.Context, rdb redis.Scripter, replica string, leases []string) (lost []string, stale bool, err error) {
	args := append(s.args(1+len(leases)), replica)
	for _, id := range leases {
		args = append(args, id)
	}
	res, err := keepaliveScript.Run(ctx, rdb, s.keys(), args...).Slice()
	if err != nil {
		return nil, false, err
	}
	if len(res) != 2 {
		return nil, false, fmt.Errorf("keepalive.lua: unexpected reply %v", res)
	}
	list, _ := res[0].([]any)
	for _, v := range list {
		if id, ok := v.(string); ok {
			lost = append(lost, id)
		}
	}
	n, _ := res[1].(int64)
	return lost, n == 1, nil
}

// AcquireSHA and ReleaseSHA are the SHA1s with which acquire.lua and
// release.lua are sent (EVALSHA), for tests that pick those calls out of a
// connection.
func AcquireSHA() string { return acquireScript.Hash() }

// ReleaseSHA: see AcquireSHA.
func ReleaseSHA() string { return releaseScript.Hash() }

// KeepaliveSHA: see AcquireSHA (keepalive.lua also confirms a slot handed
// over to a waiter).
func KeepaliveSHA() string { return keepaliveScript.Hash() }

// HandOff is a message on a replica's wake channel, parsed: a grant made for
// a queued waiter (GrantedAt, Redis time in microseconds), or a wake-up
// (GrantedAt 0).
type HandOff struct {
	ID        string
	GrantedAt int64
}

// ParseHandOff reads a message of the wake channel of replica: "<rest of
// id>" or "<rest of id>=<grant time in hex>" (the id without "<replica>.").
func ParseHandOff(replica, payload string) HandOff {
	rest, at, ok := strings.Cut(payload, "=")
	h := HandOff{ID: replica + "." + rest}
	if ok {
		h.GrantedAt, _ = strconv.ParseInt(at, 16, 64)
	}
	return h
}
