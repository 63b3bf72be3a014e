package faultproxy_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/faultproxy"
	"github.com/sluicehq/sluice/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// setup returns a direct client of the shared test Redis, a proxy in front of
// it and a unique key prefix.
func setup(t *testing.T) (*redis.Client, *faultproxy.Proxy, string) {
	t.Helper()
	srv := redistest.New(t)
	return srv.Client(t), faultproxy.New(t, srv.Addr()), "{" + redistest.Budget(t) + "}:"
}

func client(t *testing.T, p *faultproxy.Proxy, configure func(*redis.Options)) *redis.Client {
	t.Helper()
	opt := &redis.Options{Addr: p.Addr()}
	if configure != nil {
		configure(opt)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
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

func TestPipelineCountsAndAnswersInOrder(t *testing.T) {
	for _, proto := range []int{2, 3} {
		t.Run("RESP"+strconv.Itoa(proto), func(t *testing.T) {
			_, p, prefix := setup(t)
			sets := p.Count(faultproxy.Match{Cmd: "set", Arg: prefix})
			c := client(t, p, func(o *redis.Options) { o.Protocol = proto })
			ctx := context.Background()
			const n = 200
			var gets []*redis.StringCmd
			_, err := c.Pipelined(ctx, func(pp redis.Pipeliner) error {
				for i := range n {
					pp.Set(ctx, prefix+strconv.Itoa(i), i, time.Minute)
					gets = append(gets, pp.Get(ctx, prefix+strconv.Itoa(i)))
				}
				pp.HSet(ctx, prefix+"h", "a", 1, "b", 2) // a map reply on RESP3 below
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for i, g := range gets {
				if g.Val() != strconv.Itoa(i) {
					t.Fatalf("GET %d: %q", i, g.Val())
				}
			}
			if m, err := c.HGetAll(ctx, prefix+"h").Result(); err != nil || len(m) != 2 {
				t.Fatalf("HGETALL: %v %v", m, err)
			}
			if got := sets.Load(); got != n {
				t.Fatalf("counted %d SETs, want %d", got, n)
			}
		})
	}
}

func TestDropReplyRunsTheCommandAndClosesTheClient(t *testing.T) {
	direct, p, prefix := setup(t)
	ctx := context.Background()

	// Without retries the client sees the lost reply as an error...
	key := prefix + "once"
	rule := p.DropReply(faultproxy.Match{Cmd: "INCR", Arg: key})
	noRetry := client(t, p, func(o *redis.Options) { o.MaxRetries = -1 })
	if err := noRetry.Incr(ctx, key).Err(); err == nil {
		t.Fatal("INCR with its reply dropped succeeded")
	}
	within(t, rule.Done(), 5*time.Second, "Done of the dropped command")
	if v, err := direct.Get(ctx, key).Int(); err != nil || v != 1 {
		t.Fatalf("Redis ran the command %v times (%v), want 1", v, err)
	}

	// ...and a client that retries (go-redis's default) runs it again; a
	// Hold installed after the DropReply catches the retry.
	key = prefix + "retried"
	p.DropReply(faultproxy.Match{Cmd: "INCR", Arg: key})
	release := make(chan struct{})
	held := p.Hold(faultproxy.Match{Cmd: "INCR", Arg: key}, release)
	retry := client(t, p, nil)
	type result struct {
		v   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := retry.Incr(ctx, key).Result()
		done <- result{v, err}
	}()
	within(t, held.Matched(), 5*time.Second, "the retry reaching the proxy")
	if v, err := direct.Get(ctx, key).Int(); err != nil || v != 1 {
		t.Fatalf("while the retry is held: %v (%v), want 1", v, err)
	}
	close(release)
	if r := <-done; r.err != nil || r.v != 2 {
		t.Fatalf("retried INCR: %v, %v; want 2 (run twice), nil", r.v, r.err)
	}
}

func TestHoldGoesOnAfterTheClientGaveUp(t *testing.T) {
	direct, p, prefix := setup(t)
	key := prefix + "held"
	release := make(chan struct{})
	rule := p.Hold(faultproxy.Match{Cmd: "SET", Arg: key}, release)
	c := client(t, p, func(o *redis.Options) { o.ContextTimeoutEnabled = true })

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Set(ctx, key, "late", time.Minute).Err() }()
	within(t, rule.Matched(), 5*time.Second, "Matched")
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SET held past its deadline: %v, want a deadline error", err)
	}
	if n, err := direct.Exists(context.Background(), key).Result(); err != nil || n != 0 {
		t.Fatalf("held SET reached Redis early: %v %v", n, err)
	}
	close(release)
	within(t, rule.Done(), 5*time.Second, "Done of the held command")
	if v, err := direct.Get(context.Background(), key).Result(); err != nil || v != "late" {
		t.Fatalf("after the hold: %q %v, want the late SET to have run", v, err)
	}
}

func TestDelayAndWatch(t *testing.T) {
	_, p, prefix := setup(t)
	key := prefix + "delayed"
	delayed := p.Delay(faultproxy.Match{Cmd: "SET", Arg: key}, 50*time.Millisecond)
	watched := p.Watch(faultproxy.Match{Cmd: "GET", Arg: key})
	c := client(t, p, nil)
	ctx := context.Background()
	if err := c.Set(ctx, key, "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, key).Result(); err != nil || v != "v" {
		t.Fatalf("GET: %q %v", v, err)
	}
	for _, ch := range []<-chan struct{}{delayed.Matched(), delayed.Done(), watched.Matched(), watched.Done()} {
		within(t, ch, time.Second, "rule signals")
	}
}

func TestBlackHoleLeavesASilentHalfOpenSubscription(t *testing.T) {
	for _, proto := range []int{2, 3} {
		t.Run("RESP"+strconv.Itoa(proto), func(t *testing.T) {
			direct, p, prefix := setup(t)
			channel := prefix + "wake"
			c := client(t, p, func(o *redis.Options) { o.Protocol = proto })
			ctx := context.Background()
			ps := c.Subscribe(ctx, channel)
			defer ps.Close()
			if _, err := ps.ReceiveTimeout(ctx, 5*time.Second); err != nil { // the confirmation
				t.Fatal(err)
			}
			if err := direct.Publish(ctx, channel, "before").Err(); err != nil {
				t.Fatal(err)
			}
			if msg, err := ps.ReceiveTimeout(ctx, 5*time.Second); err != nil || msg.(*redis.Message).Payload != "before" {
				t.Fatalf("before the black hole: %v %v", msg, err)
			}

			if n := p.BlackHole(faultproxy.Match{Cmd: "SUBSCRIBE", Arg: channel}); n != 1 {
				t.Fatalf("black-holed %d connections, want 1", n)
			}
			if err := direct.Publish(ctx, channel, "lost").Err(); err != nil {
				t.Fatal(err)
			}
			// Nothing arrives, and nothing says the connection is gone:
			// the read times out (no EOF, no reset), and Redis still
			// counts the subscriber.
			_, err := ps.ReceiveTimeout(ctx, 300*time.Millisecond)
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("receive on a black hole: %v, want a timeout", err)
			}
			subs, err := direct.PubSubNumSub(ctx, channel).Result()
			if err != nil || subs[channel] != 1 {
				t.Fatalf("Redis sees %v subscribers (%v), want 1", subs[channel], err)
			}
			// Other connections are not affected.
			if err := c.Ping(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBlackHoleNextSwallowsTheCommand(t *testing.T) {
	direct, p, prefix := setup(t)
	key := prefix + "swallowed"
	rule := p.BlackHoleNext(faultproxy.Match{Cmd: "SET", Arg: key})
	c := client(t, p, func(o *redis.Options) { o.MaxRetries = -1; o.ReadTimeout = 200 * time.Millisecond })
	err := c.Set(context.Background(), key, "v", time.Minute).Err()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("SET into a black hole: %v, want a timeout", err)
	}
	within(t, rule.Matched(), time.Second, "Matched")
	if n, err := direct.Exists(context.Background(), key).Result(); err != nil || n != 0 {
		t.Fatalf("a black-holed command reached Redis: %v %v", n, err)
	}
}
