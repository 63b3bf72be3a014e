package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redisstate"
	"github.com/sluicehq/sluice/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestNewShared(t *testing.T) {
	t.Parallel()
	s := redistest.New(t)
	if s != redistest.New(t) {
		t.Fatal("New returned two different servers")
	}
	if !slices.Contains([]string{redistest.KindContainer, redistest.KindURL, redistest.KindProcess}, s.Kind()) {
		t.Fatalf("Kind() = %q", s.Kind())
	}
	if _, _, err := net.SplitHostPort(s.Addr()); err != nil {
		t.Fatalf("Addr() = %q: %v", s.Addr(), err)
	}
	if !strings.HasPrefix(s.URL(), "redis://") {
		t.Fatalf("URL() = %q", s.URL())
	}

	ctx := t.Context()
	rdb := s.Client(t)
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	key := "redistest:{" + redistest.Budget(t) + "}:k"
	if err := rdb.Set(ctx, key, "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := rdb.Get(ctx, key).Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v", got, err)
	}
}

func TestBudget(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"plain", "with {braces}: and spaces/ü", strings.Repeat("long", 40)} {
		t.Run(name, func(t *testing.T) {
			a, b := redistest.Budget(t), redistest.Budget(t)
			if a == b {
				t.Fatalf("Budget twice = %q", a)
			}
			for _, s := range []string{a, b} {
				if strings.ContainsAny(s, "{}: /") || len(s) > 64 || !strings.HasPrefix(s, "TestBudget_") {
					t.Fatalf("Budget = %q", s)
				}
			}
		})
	}
}

// fatalRecorder records a Fatal instead of failing the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestFaultsRefusedOnShared(t *testing.T) {
	t.Parallel()
	s := redistest.New(t)
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Pause(rec)
	}()
	<-done
	if !strings.Contains(rec.msg, "NewIsolated") {
		t.Fatalf("Pause on the shared server: %q", rec.msg)
	}
}

func TestCommandStatsAndKeysWithoutTTL(t *testing.T) {
	t.Parallel()
	s := redistest.NewIsolated(t)
	if s.Addr() == redistest.New(t).Addr() {
		t.Fatal("NewIsolated returned the shared server")
	}
	ctx := t.Context()
	rdb := s.Client(t)
	budget := redistest.Budget(t)
	key := func(name string) string { return redisstate.Prefix(budget) + name }

	if err := redistest.ResetStats(ctx, rdb); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if err := rdb.Set(ctx, key(k), 1, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	rdb.Get(ctx, key("a"))
	rdb.Get(ctx, key("missing"))
	if err := rdb.Expire(ctx, key("b"), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	stats, err := redistest.CommandStats(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	if stats["set"] != 3 || stats["get"] != 2 || stats["expire"] != 1 {
		t.Fatalf("CommandStats = %v, want set 3, get 2, expire 1", stats)
	}

	keys, err := redistest.KeysWithoutTTL(ctx, rdb, redisstate.Prefix(budget)+"*")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{key("a"), key("c")}; !slices.Equal(keys, want) {
		t.Fatalf("KeysWithoutTTL = %q, want %q", keys, want)
	}
}

func TestPause(t *testing.T) {
	t.Parallel()
	s := redistest.NewIsolated(t)
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	opt.ReadTimeout, opt.WriteTimeout, opt.MaxRetries = 200*time.Millisecond, 200*time.Millisecond, -1
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx := t.Context()
	key := "redistest:{" + redistest.Budget(t) + "}:k"
	if err := rdb.Set(ctx, key, "kept", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}

	s.Pause(t)
	began := time.Now()
	err = rdb.Get(ctx, key).Err()
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("GET on a paused server: %v, want a timeout", err)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("GET on a paused server took %v", d)
	}

	s.Unpause(t)
	if got, err := rdb.Get(ctx, key).Result(); err != nil || got != "kept" {
		t.Fatalf("GET after Unpause = %q, %v", got, err)
	}
}

func TestRestart(t *testing.T) {
	t.Parallel()
	s := redistest.NewIsolated(t)
	addr := s.Addr()
	ctx := t.Context()
	rdb := s.Client(t)
	key := "redistest:{" + redistest.Budget(t) + "}:k"
	if err := rdb.Set(ctx, key, "lost", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}

	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("Addr after Restart = %s, was %s", s.Addr(), addr)
	}
	// The pooled connection died with the server; go-redis retries on a new one.
	if err := rdb.Get(ctx, key).Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after Restart: %v, want redis.Nil (data lost)", err)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := redistest.NewCluster(t)
	if n := len(c.Addrs()); n != 3 {
		t.Fatalf("Addrs() has %d nodes", n)
	}
	ctx := t.Context()
	rdb := c.Client(t)

	// One key per master: slots 0-5460, 5461-10921 and 10922-16383.
	keys := make([]string, 3)
	for i := 0; slices.Contains(keys, ""); i++ {
		k := fmt.Sprintf("redistest:%d", i)
		slot, err := rdb.ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		if slot >= 5461 {
			n = 1
		}
		if slot >= 10922 {
			n = 2
		}
		if keys[n] == "" {
			keys[n] = k
		}
	}
	if err := redistest.ResetStats(ctx, rdb); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := rdb.Set(ctx, k, k, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}
	for _, k := range keys {
		if got, err := rdb.Get(ctx, k).Result(); err != nil || got != k {
			t.Fatalf("GET %s = %q, %v", k, got, err)
		}
	}

	// Each master holds exactly one of the keys.
	err := rdb.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		if n, err := node.DBSize(ctx).Result(); err != nil || n != 1 {
			return fmt.Errorf("%s: DBSIZE = %d, %v", node.Options().Addr, n, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	stats, err := redistest.CommandStats(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	if stats["set"] != 3 || stats["get"] != 3 {
		t.Fatalf("CommandStats = %v, want set 3 and get 3 over all masters", stats)
	}
	if err := rdb.Expire(ctx, keys[1], time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := redistest.KeysWithoutTTL(ctx, rdb, "redistest:*")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{keys[0], keys[2]}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("KeysWithoutTTL = %q, want %q", got, want)
	}
}
