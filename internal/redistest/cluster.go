package redistest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterTimeout bounds starting a cluster and waiting for it to agree.
const clusterTimeout = time.Minute

// Cluster is a Redis Cluster of 3 masters (no replicas), each a redis-server
// process on 127.0.0.1, owning a third of the 16384 slots.
type Cluster struct {
	nodes []*process
}

// NewCluster starts a 3-master Redis Cluster for this test alone and stops it
// when the test ends. It returns once every node reports cluster_state:ok and
// all nodes agree on which node owns which slots, so a fresh
// [redis.ClusterClient] routes every key right at once. Without redis-server
// on PATH the test is skipped, or fails if SLUICETEST_REQUIRE_DOCKER is set.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		fail(t, fmt.Errorf("%w: NewCluster needs redis-server on PATH: %v", errNoBackend, err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	c := &Cluster{}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.kill()
		}
	})
	for range 3 {
		n, err := startProcess(ctx, &processOptions{dir: dir, cluster: true})
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, n)
	}
	if err := c.join(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("redistest: cluster %v ready in %v", c.Addrs(), time.Since(began).Round(time.Millisecond))
	return c
}

// Addrs returns the host:port of each master.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.addr()
	}
	return addrs
}

// Client returns a new cluster client, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// join assigns the slots, introduces the nodes to each other and waits until
// they agree.
func (c *Cluster) join(ctx context.Context) error {
	clients := make([]*redis.Client, len(c.nodes))
	for i, n := range c.nodes {
		clients[i] = redis.NewClient(&redis.Options{Addr: n.addr(), Protocol: 2, DisableIdentity: true})
		defer clients[i].Close()
	}
	const slots = 16384
	for i, rdb := range clients {
		first, last := i*slots/len(clients), (i+1)*slots/len(clients)
		ids := make([]int, 0, last-first)
		for s := first; s < last; s++ {
			ids = append(ids, s)
		}
		// ADDSLOTS rather than ADDSLOTSRANGE: Redis 6 has only the former.
		if err := rdb.ClusterAddSlots(ctx, ids...).Err(); err != nil {
			return fmt.Errorf("redistest: CLUSTER ADDSLOTS on %s: %w", c.nodes[i].addr(), err)
		}
		// Distinct epochs from the start, as redis-cli --cluster create does:
		// the nodes need not resolve a collision first.
		if err := rdb.Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			return fmt.Errorf("redistest: CLUSTER SET-CONFIG-EPOCH on %s: %w", c.nodes[i].addr(), err)
		}
	}
	// Every pair meets directly: left to gossip, a node may count a peer it
	// half knows as unreachable and then wait out a rejoin delay (seconds).
	for i, rdb := range clients {
		for _, n := range c.nodes[i+1:] {
			if err := rdb.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(n.port)).Err(); err != nil {
				return fmt.Errorf("redistest: CLUSTER MEET %s: %w", n.addr(), err)
			}
		}
	}
	// Masters turn cluster_state:ok no sooner than 2s after they started
	// (CLUSTER_WRITABLE_DELAY): that is most of the wait.
	var last error
	for {
		if last = agreed(ctx, clients); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redistest: cluster %v not ready: %w (last: %v)", c.Addrs(), ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// agreed returns nil when every node reports cluster_state:ok and sees the
// same healthy masters owning the same slots as the others. CLUSTER NODES,
// unlike CLUSTER SHARDS, exists in Redis 6 too.
func agreed(ctx context.Context, clients []*redis.Client) error {
	var want string
	for i, rdb := range clients {
		info, err := rdb.ClusterInfo(ctx).Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "cluster_state:ok\r\n") {
			return fmt.Errorf("node %d: cluster_state not ok", i)
		}
		nodes, err := rdb.ClusterNodes(ctx).Result()
		if err != nil {
			return err
		}
		view, err := slotView(nodes, len(clients))
		if err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		if i == 0 {
			want = view
		} else if view != want {
			return fmt.Errorf("node %d sees %q, node 0 %q", i, view, want)
		}
	}
	return nil
}

// slotView renders CLUSTER NODES canonically, "addr slots...; ..." sorted by
// address, so that the views of two nodes compare as strings. It fails unless
// it lists n connected masters that all own slots.
func slotView(nodes string, n int) (string, error) {
	var rows []string
	for line := range strings.Lines(nodes) {
		// <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		if flags := strings.TrimPrefix(f[2], "myself,"); flags != "master" || f[7] != "connected" {
			return "", fmt.Errorf("%s is %s, %s", addr, f[2], f[7])
		}
		if len(f) == 8 {
			return "", fmt.Errorf("%s owns no slots yet", addr)
		}
		rows = append(rows, addr+" "+strings.Join(f[8:], " "))
	}
	if len(rows) != n {
		return "", errors.New("not all nodes known yet")
	}
	slices.Sort(rows)
	return strings.Join(rows, "; "), nil
}
