package redistest_test

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/redistest"
)

// A Sentinel setup fails over: after the primary is SIGKILLed, the Sentinels
// promote the replica, which has the data replicated before (and not what
// was written after HoldReplication), and a Sentinel-aware client writes to
// it.
func TestSentinel(t *testing.T) {
	s := redistest.NewSentinel(t)
	rdb := s.Client(t)
	ctx := context.Background()
	key := redistest.Budget(t)
	if err := rdb.Set(ctx, key, "before", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	// WAIT: the replica has the write before the primary dies.
	if n, err := rdb.Wait(ctx, 1, 5000).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT: %d replicas, %v", n, err)
	}
	s.HoldReplication()
	if err := rdb.Set(ctx, key+"-lost", "held", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	killed := s.KillPrimary(t)
	began := time.Now()
	primary := s.WaitFailover(t, killed, 30*time.Second)
	t.Logf("failover %s -> %s in %v", killed, primary, time.Since(began).Round(time.Millisecond))
	if primary == killed {
		t.Fatalf("primary still %s", primary)
	}
	var got string
	for { // the client learns of the new primary on its next dial
		var err error
		if got, err = rdb.Get(ctx, key).Result(); err == nil {
			break
		}
		if time.Since(began) > 30*time.Second {
			t.Fatalf("no answer from the new primary: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got != "before" {
		t.Fatalf("got %q after the failover, want the replicated value", got)
	}
	if n, err := rdb.Exists(ctx, key+"-lost").Result(); err != nil || n != 0 {
		t.Fatalf("a write made while replication was held survived the failover (%d, %v)", n, err)
	}
	if err := rdb.Set(ctx, key, "after", time.Minute).Err(); err != nil {
		t.Fatalf("write to the new primary: %v", err)
	}
	if u := s.URL(); u == "" {
		t.Fatal("no URL")
	}
}
