package semaphore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/faultproxy"
	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/semaphore"
)

// What the fault tests know of the semaphore's Redis layout and scripts:
// only this file, so that it is trivial to follow when they move.

// budgetKeys are the Redis keys of a budget's semaphore.
type budgetKeys struct {
	leases string // zset: lease id -> expiry
	queue  string // zset: waiter id -> ticket
}

func keysOf(budget string) budgetKeys {
	k := redisstate.For(budget)
	return budgetKeys{leases: k.Leases, queue: k.Queue}
}

// acquireCall and releaseCall match the script calls that take a slot and
// that release or withdraw one (by their SHA: Script.Run sends EVALSHA, and
// the scripts are loaded first, so no EVAL fallback happens).
var (
	acquireCall = faultproxy.Match{Cmd: "EVALSHA", Arg: redisstate.AcquireSHA()}
	releaseCall = faultproxy.Match{Cmd: "EVALSHA", Arg: redisstate.ReleaseSHA()}
	// keepaliveCall matches renewals, heartbeats and the confirmation of
	// a slot handed over to a waiter.
	keepaliveCall = faultproxy.Match{Cmd: "EVALSHA", Arg: redisstate.KeepaliveSHA()}
)

// subscribeCalls match the commands that open a subscription of budget's
// wake-ups (classic or sharded pub/sub).
func subscribeCalls(budget string) []faultproxy.Match {
	return []faultproxy.Match{{Cmd: "SUBSCRIBE", Arg: budget}, {Cmd: "SSUBSCRIBE", Arg: budget}}
}

// faultEnv is one fault test's world: a real Redis, a fault proxy in front of
// it, a budget of the test's own.
type faultEnv struct {
	t      *testing.T
	direct *redis.Client // straight to Redis: the observer, and healthy replicas
	proxy  *faultproxy.Proxy
	budget string
	keys   budgetKeys
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	srv := redistest.New(t)
	e := &faultEnv{t: t, direct: srv.Client(t), proxy: faultproxy.New(t, srv.Addr()), budget: redistest.Budget(t)}
	e.keys = keysOf(e.budget)
	for _, s := range redisstate.Scripts() {
		if err := s.Load(context.Background(), e.direct).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// proxied returns a client whose connections all go through the fault proxy,
// with go-redis's default retries.
func (e *faultEnv) proxied() *redis.Client { return e.proxiedWith(3) }

// proxiedWith returns a client through the fault proxy with the options a
// library user would set, spelled out because they decide what a fault does:
func (e *faultEnv) proxiedWith(maxRetries int) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr: e.proxy.Addr(),
		// 3 is go-redis's default: a command whose reply is lost
		// (connection closed, EOF) is sent again, on a new connection,
		// with the same arguments; -1 sends it once. The semaphore must
		// be right whatever this is.
		MaxRetries: maxRetries,
		// A call ends at the caller's deadline (as sluice serve sets it):
		// the command may still reach Redis after the caller gave up.
		ContextTimeoutEnabled: true,
	})
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// sem returns a semaphore of the test's budget on rdb, closed at the end.
func (e *faultEnv) sem(rdb redis.UniversalClient, opt semaphore.Options) *semaphore.Semaphore {
	e.t.Helper()
	s, err := semaphore.New(rdb, e.budget, opt)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = s.Close() })
	return s
}

// card returns the number of members of a zset of the budget.
func (e *faultEnv) card(key string) int64 {
	e.t.Helper()
	n, err := e.direct.ZCard(context.Background(), key).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// has reports whether id is a member of a zset of the budget.
func (e *faultEnv) has(key, id string) bool {
	e.t.Helper()
	err := e.direct.ZScore(context.Background(), key, id).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		e.t.Fatal(err)
	}
	return err == nil
}

// eventually polls cond (every 10ms) until it holds, and reports whether it
// did within d. It watches Redis state, for which no signal exists.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// within fails the test unless ch is closed within d.
func within(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("%s: not within %v", what, d)
	}
}

// acquired is the outcome of an Acquire run in the background.
type acquired struct {
	l   *semaphore.Lease
	err error
	at  time.Time
}

// acquireAsync runs s.Acquire(ctx) in a goroutine; the result arrives on the
// channel.
func acquireAsync(ctx context.Context, s *semaphore.Semaphore) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		l, err := s.Acquire(ctx)
		ch <- acquired{l, err, time.Now()}
	}()
	return ch
}
