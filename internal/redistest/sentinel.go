package redistest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Settings of the Sentinels of [NewSentinel]: quick, so a test sees a
// failover within a few seconds. A primary silent for SentinelDownAfter is
// down for that Sentinel; two of three must agree (the quorum).
const (
	SentinelMaster          = "sluice"
	SentinelDownAfter       = 500 * time.Millisecond
	SentinelFailoverTimeout = 3 * time.Second
)

// Sentinel is a Redis primary with one replica, watched by three Sentinels
// (quorum 2), each a process on 127.0.0.1, all for one test. Its methods are
// for the test's goroutine.
type Sentinel struct {
	nodes     []*process // the first primary, then its replica
	sentinels []*process
	link      *link // the replica's connection to the primary
}

// NewSentinel starts a primary, a replica of it, and three Sentinels
// monitoring it as [SentinelMaster], and stops them when the test ends. It
// returns once the replica is in sync and every Sentinel knows the replica
// and the two other Sentinels, so a failover can start at once. Without
// redis-server and redis-sentinel on PATH the test is skipped, or fails if
// SLUICETEST_REQUIRE_DOCKER is set. Neither node persists anything: a node
// restarted empty is the failover case too.
func NewSentinel(t testing.TB) *Sentinel {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-sentinel"} {
		if _, err := exec.LookPath(bin); err != nil {
			fail(t, fmt.Errorf("%w: NewSentinel needs %s on PATH (Debian: apt-get install redis-server redis-sentinel): %v", errNoBackend, bin, err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	s := &Sentinel{}
	t.Cleanup(func() {
		for _, p := range append(s.sentinels, s.nodes...) {
			p.kill()
		}
	})
	start := func(opts processOptions) *process {
		t.Helper()
		var err error
		if opts.dir, err = os.MkdirTemp(dir, "node-"); err != nil {
			t.Fatal(err)
		}
		p, err := startProcess(ctx, &opts)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The replica syncs at once (no 5s wait for more replicas to join), and
	// through a link the test can cut (HoldReplication).
	primary := start(processOptions{extra: []string{"--repl-diskless-sync-delay", "0"}})
	s.nodes = append(s.nodes, primary)
	host, port, _ := net.SplitHostPort(primary.addr())
	var err error
	if s.link, err = newLink(primary.addr()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.link.close)
	lhost, lport, _ := net.SplitHostPort(s.link.addr())
	s.nodes = append(s.nodes, start(processOptions{extra: []string{"--replicaof", lhost, lport}}))
	if err := waitReplica(ctx, s.nodes[1].addr()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f, err := os.CreateTemp(dir, "sentinel-*.conf") // Sentinel rewrites it
		if err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
		m := SentinelMaster
		s.sentinels = append(s.sentinels, start(processOptions{bin: "redis-sentinel", conf: f.Name(), extra: []string{
			"--sentinel", "monitor", m, host, port, "2",
			"--sentinel", "down-after-milliseconds", m, strconv.Itoa(int(SentinelDownAfter.Milliseconds())),
			"--sentinel", "failover-timeout", m, strconv.Itoa(int(SentinelFailoverTimeout.Milliseconds())),
		}}))
	}
	if err := s.waitAcquainted(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("redistest: primary %s, replica %s, sentinels %v ready in %v", primary.addr(), s.nodes[1].addr(),
		s.SentinelAddrs(), time.Since(began).Round(time.Millisecond))
	return s
}

// SentinelAddrs returns the host:port of each Sentinel.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, p := range s.sentinels {
		addrs[i] = p.addr()
	}
	return addrs
}

// URL returns the URL that go-redis' ParseFailoverURL reads (and the gateway
// with SLUICE_REDIS_MODE=sentinel): the first Sentinel, the others as addr
// parameters, and master_name.
func (s *Sentinel) URL() string {
	addrs := s.SentinelAddrs()
	q := url.Values{"master_name": {SentinelMaster}, "addr": addrs[1:]}
	return "redis://" + addrs[0] + "?" + q.Encode()
}

// Client returns a new Sentinel-aware client of the current primary, closed
// when the test ends.
func (s *Sentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: s.SentinelAddrs()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Primary returns the address of the primary as the first Sentinel that
// answers names it.
func (s *Sentinel) Primary(ctx context.Context) (string, error) {
	var errs []error
	for _, p := range s.sentinels {
		addr, err := masterOf(ctx, p.addr())
		if err == nil {
			return addr, nil
		}
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
}

// HoldReplication makes the first primary's replica receive nothing more
// from it: every write the primary acknowledges from now on is lost when it
// dies. Asynchronous replication loses the writes of its last moments; this
// makes those moments as long as the test likes. The replica still looks in
// sync to the primary and the Sentinels, and is promoted as usual.
func (s *Sentinel) HoldReplication() { s.link.held.Store(true) }

// KillPrimary SIGKILLs the process of the current primary, which loses what
// it had not yet sent to its replica, and returns its address.
func (s *Sentinel) KillPrimary(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr, err := s.Primary(ctx)
	if err != nil {
		t.Fatalf("redistest: no Sentinel names the primary: %v", err)
	}
	for _, p := range s.nodes {
		if p.addr() == addr {
			p.kill()
			return addr
		}
	}
	t.Fatalf("redistest: the primary %s is none of the nodes started", addr)
	return ""
}

// WaitFailover waits until every Sentinel names a primary other than old and
// that node answers as a writable primary, and returns its address. It
// fails the test after timeout.
func (s *Sentinel) WaitFailover(t testing.TB, old string, timeout time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for {
		addr, err := s.agreedPrimary(ctx, old)
		if err == nil {
			if err = isPrimary(ctx, addr); err == nil {
				return addr
			}
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("redistest: no failover from %s within %v: %v", old, timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// agreedPrimary returns the primary that every Sentinel names, if they agree
// and it is not old.
func (s *Sentinel) agreedPrimary(ctx context.Context, old string) (string, error) {
	var agreed string
	for _, p := range s.sentinels {
		addr, err := masterOf(ctx, p.addr())
		switch {
		case err != nil:
			return "", err
		case addr == old:
			return "", fmt.Errorf("sentinel %s still names %s", p.addr(), old)
		case agreed != "" && addr != agreed:
			return "", fmt.Errorf("sentinels name %s and %s", agreed, addr)
		}
		agreed = addr
	}
	return agreed, nil
}

// waitAcquainted waits until every Sentinel knows the replica and the two
// other Sentinels (they meet through hello messages every 2s).
func (s *Sentinel) waitAcquainted(ctx context.Context) error {
	for {
		err := func() error {
			for _, p := range s.sentinels {
				c := redis.NewSentinelClient(&redis.Options{Addr: p.addr()})
				replicas, err := c.Replicas(ctx, SentinelMaster).Result()
				if err == nil && len(replicas) != 1 {
					err = fmt.Errorf("sentinel %s knows %d replicas", p.addr(), len(replicas))
				}
				if err == nil {
					var others []map[string]string
					others, err = c.Sentinels(ctx, SentinelMaster).Result()
					if err == nil && len(others) != len(s.sentinels)-1 {
						err = fmt.Errorf("sentinel %s knows %d other sentinels", p.addr(), len(others))
					}
				}
				_ = c.Close()
				if err != nil {
					return err
				}
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redistest: sentinels not ready: %w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// masterOf asks the Sentinel at addr for the primary's address.
func masterOf(ctx context.Context, addr string) (string, error) {
	c := redis.NewSentinelClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	hp, err := c.GetMasterAddrByName(ctx, SentinelMaster).Result()
	if err != nil {
		return "", fmt.Errorf("sentinel %s: %w", addr, err)
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("sentinel %s: master address %v", addr, hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// waitReplica waits until the replica at addr is in sync with its primary.
func waitReplica(ctx context.Context, addr string) error {
	for {
		info, err := replication(ctx, addr)
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redistest: replica %s not in sync: %w (%v)", addr, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// isPrimary reports an error unless the node at addr is a primary.
func isPrimary(ctx context.Context, addr string) error {
	info, err := replication(ctx, addr)
	if err != nil {
		return err
	}
	if !strings.Contains(info, "role:master") {
		return fmt.Errorf("%s is not a primary yet", addr)
	}
	return nil
}

// replication returns the replication section of INFO of the node at addr.
func replication(ctx context.Context, addr string) (string, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return c.Info(ctx, "replication").Result()
}

// link is a TCP proxy on loopback between a replica and its primary. Once
// held, what the primary sends is dropped, never delivered.
type link struct {
	ln     net.Listener
	target string
	held   atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
}

func newLink(target string) (*link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &link{ln: ln, target: target}
	go l.serve()
	return l, nil
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) serve() {
	for {
		down, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		up, err := net.Dial("tcp", l.target)
		if err != nil {
			_ = down.Close()
			continue
		}
		l.mu.Lock()
		l.conns = append(l.conns, down, up)
		l.mu.Unlock()
		go func() { _, _ = io.Copy(up, down); _ = up.Close() }()
		go l.forward(down, up)
	}
}

// forward copies what the primary sends to the replica, unless held.
func (l *link) forward(down, up net.Conn) {
	defer down.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 && !l.held.Load() {
			if _, err := down.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (l *link) close() {
	_ = l.ln.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
}
