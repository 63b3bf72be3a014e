package redisstate

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestPrefixIsAHashTag(t *testing.T) {
	for _, budget := range []string{"default", "a{b}c", "x}", strings.Repeat("z", 100), "sp ace", "", "é"} {
		p := Prefix(budget)
		open, close := strings.IndexByte(p, '{'), strings.IndexByte(p, '}')
		if open < 0 || close < open+2 || strings.Count(p, "{") != 1 || strings.Count(p, "}") != 1 || len(p) > 90 {
			t.Errorf("Prefix(%q) = %q: not a single well-formed hash tag", budget, p)
		}
	}
}

// env is a budget of the test's own on the shared Redis, with a semaphore
// configuration of one slot.
type env struct {
	t   *testing.T
	rdb *redis.Client
	sem Semaphore
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return &env{t: t, rdb: redistest.New(t).Client(t), sem: Semaphore{
		Keys: For(redistest.Budget(t)), Size: 1, LeaseTTL: time.Minute, WaiterTTL: time.Minute,
	}}
}

// acquire runs one request; "try" in mode makes it a try.
func (e *env) acquire(id string, try bool) AcquireReply {
	e.t.Helper()
	res, err := e.sem.Acquire(context.Background(), e.rdb, []AcquireRequest{{ID: id, MaxWait: -1, Try: try}})
	if err != nil {
		e.t.Fatal(err)
	}
	return res[0]
}

func (e *env) release(ids ...string) {
	e.t.Helper()
	if _, err := e.sem.Release(context.Background(), e.rdb, ids); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) members(key string) []string {
	e.t.Helper()
	m, err := e.rdb.ZRange(context.Background(), key, 0, -1).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *env) want(leases, queue []string) {
	e.t.Helper()
	if got := e.members(e.sem.Keys.Leases); strings.Join(got, ",") != strings.Join(leases, ",") {
		e.t.Errorf("leases %v, want %v", got, leases)
	}
	if got := e.members(e.sem.Keys.Queue); strings.Join(got, ",") != strings.Join(queue, ",") {
		e.t.Errorf("queue %v, want %v", got, queue)
	}
}

// A repeated acquire (a client resending after a lost reply) recognises its
// lease before anything else: granted again, with the grant's time and the
// life the lease has left, never queued, whoever has queued since.
func TestRepeatOfAGrantIsGrantedAgain(t *testing.T) {
	e := newEnv(t)
	first := e.acquire("a.1", false)
	if first.Status != Granted || first.Left != e.sem.LeaseTTL {
		t.Fatalf("first acquire %+v", first)
	}
	if r := e.acquire("b.1", false); r.Status != Queued || r.Reason != Full {
		t.Fatalf("second caller %+v, want queued on a full semaphore", r)
	}
	for _, try := range []bool{false, true} {
		r := e.acquire("a.1", try)
		if r.Status != Granted || r.GrantedAt != first.GrantedAt || r.Left <= 0 || r.Left > e.sem.LeaseTTL {
			t.Fatalf("repeat (try %v) %+v, want granted at %d", try, r, first.GrantedAt)
		}
	}
	e.want([]string{"a.1"}, []string{"b.1"})

	// The same for a caller granted from the head of the queue, repeated
	// after a newcomer queued behind it.
	e.release("a.1")
	if r := e.acquire("b.1", false); r.Status != Granted {
		t.Fatalf("head after release %+v", r)
	}
	if r := e.acquire("c.1", false); r.Status != Queued {
		t.Fatalf("newcomer %+v", r)
	}
	if r := e.acquire("b.1", false); r.Status != Granted {
		t.Fatalf("repeat of the head's grant %+v: re-queued behind the newcomer", r)
	}
	e.want([]string{"b.1"}, []string{"c.1"})
}

// A withdrawal that reaches Redis before the acquire it undoes (the acquire
// delayed on another connection) leaves a tombstone: the acquire is refused,
// and neither a lease nor a queue place is left, whether the slot was free
// or not.
func TestWithdrawBeforeAcquireLeavesNothing(t *testing.T) {
	e := newEnv(t)
	e.release("a.late")
	if r := e.acquire("a.late", false); r.Status != Gone {
		t.Fatalf("late acquire on a free slot: %+v, want gone", r)
	}
	e.want(nil, nil)
	if r := e.acquire("h.1", false); r.Status != Granted {
		t.Fatal(r)
	}
	e.release("b.late")
	for _, try := range []bool{false, true} {
		if r := e.acquire("b.late", try); r.Status != Gone {
			t.Fatalf("late acquire (try %v) on a busy slot: %+v, want gone", try, r)
		}
	}
	e.want([]string{"h.1"}, nil)
	// A released lease cannot come back either.
	e.release("h.1")
	if r := e.acquire("h.1", false); r.Status != Gone {
		t.Fatalf("acquire of a released id: %+v", r)
	}
	e.want(nil, nil)
	if ttl := e.rdb.PTTL(context.Background(), e.sem.Keys.Gone).Val(); ttl <= 0 || ttl > 2*TombstoneTTL {
		t.Fatalf("tombstones' TTL %v", ttl)
	}
}

// Redis's clock stepping back never moves a decision back: the scripts use
// the latest time any of them used (here set an hour ahead, as if TIME had
// just stepped back an hour).
func TestClockNeverGoesBack(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now, err := e.rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	ahead := now.Add(time.Hour).UnixMicro()
	if err := e.rdb.Set(ctx, e.sem.Keys.Clock, strconv.FormatInt(ahead, 10), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	r := e.acquire("a.1", false)
	if r.Status != Granted || r.GrantedAt < ahead {
		t.Fatalf("grant at %d, before the latest time used %d", r.GrantedAt, ahead)
	}
	exp, err := e.rdb.ZScore(ctx, e.sem.Keys.Leases, "a.1").Result()
	if err != nil || int64(exp) < ahead+e.sem.LeaseTTL.Microseconds() {
		t.Fatalf("lease expiry %v (%v), want from the latest time on", exp, err)
	}
	// The bucket too: a reservation is timed from the latest time.
	res, err := e.sem.Keys.Reserve(ctx, e.rdb, 1000, 1, 1, -1)
	if err != nil || !res.OK || res.TAT < ahead {
		t.Fatalf("reservation %+v %v, want its TAT from the latest time on", res, err)
	}
}

// The waiters of a replica whose heartbeat expired are dropped when they
// reach the head, so a live replica's caller behind them is granted.
func TestDeadReplicasWaitersAreDroppedAtTheHead(t *testing.T) {
	e := newEnv(t)
	if r := e.acquire("h.1", false); r.Status != Granted {
		t.Fatal(r)
	}
	dead := e.sem
	dead.WaiterTTL = 50 * time.Millisecond
	if res, err := dead.Acquire(context.Background(), e.rdb, []AcquireRequest{{ID: "dead.1", MaxWait: -1}, {ID: "dead.2", MaxWait: -1}}); err != nil || res[0].Status != Queued || res[1].Status != Queued {
		t.Fatal(res, err)
	}
	if r := e.acquire("live.1", false); r.Status != Queued || r.Reason != Ahead {
		t.Fatalf("live caller %+v, want queued behind the (still live) replica", r)
	}
	time.Sleep(100 * time.Millisecond) // the dead replica's heartbeat expires
	e.release("h.1")
	if r := e.acquire("live.1", false); r.Status != Granted {
		t.Fatalf("live caller %+v, want granted past the dead replica's waiters", r)
	}
	e.want([]string{"live.1"}, nil)
}

// A freed slot is handed over to the head at once, and the message reaches
// only the replica that owns it, on its own channel.
func TestWakeReachesOnlyTheOwner(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ps := e.rdb.Subscribe(ctx, e.sem.Keys.WakeChannel("a"), e.sem.Keys.WakeChannel("b"))
	defer ps.Close()
	for range 2 {
		if _, err := ps.Receive(ctx); err != nil { // the subscription confirmations
			t.Fatal(err)
		}
	}
	if r := e.acquire("b.1", false); r.Status != Granted {
		t.Fatal(r)
	}
	if r := e.acquire("a.1", false); r.Status != Queued {
		t.Fatal(r)
	}
	e.release("b.1")
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := ParseHandOff("a", msg.Payload)
	if msg.Channel != e.sem.Keys.WakeChannel("a") || h.ID != "a.1" || h.GrantedAt == 0 {
		t.Fatalf("message %q on %q, want a.1's hand-off on a's channel", msg.Payload, msg.Channel)
	}
	e.want([]string{"a.1"}, nil)
	if m, err := ps.ReceiveTimeout(ctx, 100*time.Millisecond); err == nil {
		t.Fatalf("another wake-up: %v", m)
	}
}

// Keepalive renews held leases, never resurrects a lost one, and reports a
// replica whose heartbeat had expired.
func TestKeepalive(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if r := e.acquire("a.1", false); r.Status != Granted {
		t.Fatal(r)
	}
	lost, stale, err := e.sem.Keepalive(ctx, e.rdb, "a", []string{"a.1", "a.gone"})
	if err != nil || len(lost) != 1 || lost[0] != "a.gone" || !stale {
		t.Fatalf("lost %v stale %v err %v; want a.gone lost and a stale first heartbeat", lost, stale, err)
	}
	if _, stale, _ := e.sem.Keepalive(ctx, e.rdb, "a", nil); stale {
		t.Fatal("a fresh heartbeat reported stale")
	}
	e.want([]string{"a.1"}, nil)
	e.release("a.1")
	keys, err := redistest.KeysWithoutTTL(ctx, e.rdb, e.sem.Keys.Prefix+"*")
	if err != nil || len(keys) > 0 {
		t.Fatalf("keys without TTL: %v %v", keys, err)
	}
}

// A slot handed over to a waiter is reserved for half a waiter TTL only:
// confirmed by a renewal it lives a whole lease TTL; unconfirmed (its
// replica died after its last heartbeat) it comes back soon, not a lease TTL
// later.
func TestHandOffIsConfirmedOrComesBack(t *testing.T) {
	e := newEnv(t)
	e.sem.WaiterTTL = 400 * time.Millisecond
	ctx := context.Background()
	for _, confirm := range []bool{true, false} {
		h, w := "h.1", "w.1"
		if !confirm {
			h, w = "h.2", "w.2"
		}
		if r := e.acquire(h, false); r.Status != Granted {
			t.Fatal(r)
		}
		if r := e.acquire(w, false); r.Status != Queued {
			t.Fatal(r)
		}
		e.release(h)
		e.want([]string{w}, nil)
		if confirm {
			if lost, _, err := e.sem.Keepalive(ctx, e.rdb, "", []string{w}); err != nil || len(lost) > 0 {
				t.Fatalf("confirm: lost %v, %v", lost, err)
			}
			exp, _ := e.rdb.ZScore(ctx, e.sem.Keys.Leases, w).Result()
			now, _ := e.rdb.Time(ctx).Result()
			if left := time.Duration(int64(exp)-now.UnixMicro()) * time.Microsecond; left < e.sem.LeaseTTL-time.Second {
				t.Fatalf("confirmed hand-off has %v left, want a lease TTL", left)
			}
			e.release(w)
			continue
		}
		time.Sleep(e.sem.WaiterTTL/2 + 50*time.Millisecond)
		if r := e.acquire("n.1", false); r.Status != Granted {
			t.Fatalf("newcomer %+v: the unconfirmed hand-off still holds the slot", r)
		}
		e.want([]string{"n.1"}, nil)
	}
}

// Every key the scripts write has a TTL, also when the scripts skip asking
// for it (a leases key they create, a new grant counter), and the first call
// of the budget in an hour, of any script, renews the grant counter's.
func TestKeysHaveTTLs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	k := e.sem.Keys
	ttls := func(keys ...string) {
		t.Helper()
		for _, key := range keys {
			if ttl := e.rdb.PTTL(ctx, key).Val(); ttl <= 0 {
				t.Fatalf("%s: TTL %v", key, ttl)
			}
		}
	}
	if r := e.acquire("a.1", false); r.Status != Granted {
		t.Fatalf("acquire: %+v", r)
	}
	if r := e.acquire("b.1", false); r.Status != Queued {
		t.Fatalf("second acquire: %+v", r)
	}
	ttls(k.Leases, k.Grants, k.Clock, k.Queue, k.Replicas)
	if ttl := e.rdb.PTTL(ctx, k.Leases).Val(); ttl > 2*e.sem.LeaseTTL {
		t.Fatalf("leases: TTL %v, more than twice the lease TTL", ttl)
	}
	e.release("a.1") // serves b.1
	ttls(k.Leases, k.Grants, k.Gone, k.Clock)
	if ttl := e.rdb.PTTL(ctx, k.Grants).Val(); ttl > 48*time.Hour {
		t.Fatalf("grants: TTL %v", ttl)
	}

	// As if the budget's last call was an hour ago: the next call, here
	// of the bucket, renews the counter.
	if err := e.rdb.PExpire(ctx, k.Grants, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	now, err := e.rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Set(ctx, k.Clock, strconv.FormatInt(now.Add(-time.Hour).UnixMicro(), 10), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Reserve(ctx, e.rdb, 1000, 10, 1, -1); err != nil {
		t.Fatal(err)
	}
	if ttl := e.rdb.PTTL(ctx, k.Grants).Val(); ttl < 47*time.Hour {
		t.Fatalf("grants: TTL %v after the first call of an hour, want two days", ttl)
	}
}

// A head that must wait for a token keeps its place and its queue keeps a
// TTL, also when it was the only waiter (serving takes the head off the
// queue and puts it back).
func TestHeadWaitingForATokenKeepsItsPlace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.sem.Size, e.sem.Interval, e.sem.Burst = 2, time.Hour.Microseconds(), 1
	if r := e.acquire("a.1", false); r.Status != Granted {
		t.Fatalf("acquire: %+v", r)
	}
	if r := e.acquire("b.1", false); r.Status != Queued || r.Reason != NoToken {
		t.Fatalf("second acquire: %+v, want queued for a token", r)
	}
	before, err := e.rdb.ZScore(ctx, e.sem.Keys.Queue, "b.1").Result()
	if err != nil {
		t.Fatal(err)
	}
	e.release("a.1") // serves the queue: b.1 still has no token
	e.want(nil, []string{"b.1"})
	if after := e.rdb.ZScore(ctx, e.sem.Keys.Queue, "b.1").Val(); after != before {
		t.Fatalf("b.1's ticket moved from %v to %v", before, after)
	}
	if ttl := e.rdb.PTTL(ctx, e.sem.Keys.Queue).Val(); ttl <= 0 || ttl > 2*e.sem.WaiterTTL {
		t.Fatalf("queue: TTL %v", ttl)
	}
}

// A waiter that asks again before the message of a slot handed over to it
// arrives (its token timer fired, a resubscription woke it) gets the slot
// as a lease with a whole lease TTL, not the short life of an unconfirmed
// hand-over: its local validity would otherwise be over at once.
func TestRepeatOfAHandOffIsConfirmed(t *testing.T) {
	e := newEnv(t)
	e.sem.WaiterTTL = 4 * time.Second // a hand-over lives 2s unconfirmed
	ctx := context.Background()
	if r := e.acquire("h.1", false); r.Status != Granted {
		t.Fatal(r)
	}
	if r := e.acquire("w.1", false); r.Status != Queued {
		t.Fatal(r)
	}
	e.release("h.1") // hands the slot over to w.1
	e.want([]string{"w.1"}, nil)
	r := e.acquire("w.1", false)
	if r.Status != Granted || r.Left != e.sem.LeaseTTL {
		t.Fatalf("w.1 asking again: %+v, want granted with a lease TTL (%s) left", r, e.sem.LeaseTTL)
	}
	exp, _ := e.rdb.ZScore(ctx, e.sem.Keys.Leases, "w.1").Result()
	now, _ := e.rdb.Time(ctx).Result()
	if left := time.Duration(int64(exp)-now.UnixMicro()) * time.Microsecond; left < e.sem.LeaseTTL-time.Second {
		t.Fatalf("w.1's lease has %v left in Redis, want a lease TTL", left)
	}
	if ago := now.Sub(time.UnixMicro(r.GrantedAt)); ago < 0 || ago > time.Second {
		t.Fatalf("granted %v ago, want the hand-over's time", ago)
	}
}
