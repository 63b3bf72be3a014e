package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server kinds, as returned by [Server.Kind].
const (
	KindContainer = "container" // a Docker container started by the harness
	KindURL       = "url"       // an existing server named by $REDIS_URL
	KindProcess   = "process"   // a redis-server child process
)

// startTimeout bounds starting one server, including a first image pull.
const startTimeout = 3 * time.Minute

// errNoBackend means that no way to get a Redis server exists here: the test
// is skipped unless SLUICETEST_REQUIRE_DOCKER is set.
var errNoBackend = errors.New("redistest: no Redis available")

// Server is a Redis server for tests. Its methods are safe for concurrent
// use; the fault helpers (Pause, Unpause, Restart) are for servers from
// [NewIsolated] only.
type Server struct {
	kind   string
	shared bool
	url    string // for KindURL
	b      backend
}

// backend is a server the harness started and can disturb.
type backend interface {
	addr() string
	pause(ctx context.Context) error
	unpause(ctx context.Context) error
	restart(ctx context.Context) error
	terminate(ctx context.Context) error
}

var (
	mainCalled atomic.Bool
	shared     struct {
		once sync.Once
		srv  *Server
		err  error
	}
)

// Main runs the tests of a package and then stops the shared server started
// by [New]. Every package whose tests call New must call it from TestMain:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// Main returns after the tests; the testing package then exits with their
// status. Code that must run before or after the tests may surround the call.
func Main(m *testing.M) {
	mainCalled.Store(true)
	setTestcontainersEnv()
	defer func() {
		if shared.srv != nil && shared.srv.b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := shared.srv.b.terminate(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "redistest: stopping the shared server:", err)
			}
		}
	}()
	m.Run()
}

// New returns the standalone Redis server shared by all tests of this test
// binary, starting it on first use. Tests must use keys of their own (see
// [Budget]) and must not pause, restart or flush it: use [NewIsolated] for
// that. The package's TestMain must call [Main], which stops the server.
// New skips or fails the test when no server can be had (see the package doc).
func New(t testing.TB) *Server {
	t.Helper()
	if !mainCalled.Load() {
		t.Fatal("redistest: New needs redistest.Main: add func TestMain(m *testing.M) { redistest.Main(m) }")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		began := time.Now()
		shared.srv, shared.err = start(ctx, true)
		if shared.err == nil {
			shared.srv.shared = true
			t.Logf("redistest: shared %s Redis at %s (started in %v)", shared.srv.kind, shared.srv.Addr(), time.Since(began).Round(time.Millisecond))
		}
	})
	if shared.err != nil {
		fail(t, shared.err)
	}
	return shared.srv
}

// NewIsolated returns a standalone Redis server for this test alone, stopped
// when the test ends. It is a container when Docker is available, else a
// redis-server process ($REDIS_URL is never used: it cannot be isolated).
func NewIsolated(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := start(ctx, false)
	if err != nil {
		fail(t, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.b.terminate(ctx); err != nil {
			t.Errorf("redistest: stopping %s: %v", s.Addr(), err)
		}
	})
	return s
}

// start picks the backend, in the order the package doc gives.
func start(ctx context.Context, allowURL bool) (*Server, error) {
	dockerErr := dockerAvailable(ctx)
	if dockerErr == nil {
		b, err := startContainer(ctx)
		if err != nil {
			return nil, err
		}
		return &Server{kind: KindContainer, b: b}, nil
	}
	if requireDocker() {
		return nil, fmt.Errorf("redistest: SLUICETEST_REQUIRE_DOCKER is set but Docker is not available: %w", dockerErr)
	}
	if u := os.Getenv("REDIS_URL"); allowURL && u != "" {
		if _, err := redis.ParseURL(u); err != nil {
			return nil, fmt.Errorf("redistest: REDIS_URL: %w", err)
		}
		return &Server{kind: KindURL, url: u}, nil
	}
	if _, err := exec.LookPath("redis-server"); err == nil {
		p, err := startProcess(ctx, nil)
		if err != nil {
			return nil, err
		}
		return &Server{kind: KindProcess, b: p}, nil
	}
	return nil, fmt.Errorf("%w: Docker is not available (%v), REDIS_URL is unset and redis-server is not on PATH", errNoBackend, dockerErr)
}

// requireDocker reports whether SLUICETEST_REQUIRE_DOCKER is set (CI sets it).
func requireDocker() bool { return os.Getenv("SLUICETEST_REQUIRE_DOCKER") != "" }

// fail skips the test when no backend exists and that is allowed, and fails
// it otherwise.
func fail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, errNoBackend) && !requireDocker() {
		t.Skip(err.Error() + " (SLUICETEST_REQUIRE_DOCKER is unset: skipping)")
	}
	t.Fatal(err)
}

// Kind tells where the server runs: KindContainer, KindURL or KindProcess.
func (s *Server) Kind() string { return s.kind }

// Addr returns the server's host:port.
func (s *Server) Addr() string {
	if s.b != nil {
		return s.b.addr()
	}
	u, _ := url.Parse(s.url) // validated in start
	return u.Host
}

// URL returns a redis:// URL of the server, for go-redis' ParseURL or a
// gateway's SLUICE_REDIS_URL.
func (s *Server) URL() string {
	if s.b != nil {
		return "redis://" + s.b.addr()
	}
	return s.url
}

// Client returns a new go-redis client of the server, closed when the test
// ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Pause freezes the server: it keeps its connections but answers nothing
// until [Server.Unpause] (docker pause, or SIGSTOP for a process). Only for
// servers from [NewIsolated].
func (s *Server) Pause(t testing.TB) { t.Helper(); s.fault(t, "Pause", backend.pause) }

// Unpause resumes a server frozen by [Server.Pause].
func (s *Server) Unpause(t testing.TB) { t.Helper(); s.fault(t, "Unpause", backend.unpause) }

// Restart stops the server and starts it again, empty: all data and scripts
// are lost and clients see their connections drop. The address stays the
// same: a process restarts on its port, and a container's host port is fixed
// when it is created, so it survives the restart. Restart fails the test if
// that port was taken meanwhile. Only for servers from [NewIsolated].
func (s *Server) Restart(t testing.TB) { t.Helper(); s.fault(t, "Restart", backend.restart) }

func (s *Server) fault(t testing.TB, name string, op func(backend, context.Context) error) {
	t.Helper()
	if s.shared || s.b == nil {
		t.Fatalf("redistest: %s would disturb every test sharing this %s server: use NewIsolated", name, s.kind)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := op(s.b, ctx); err != nil {
		t.Fatalf("redistest: %s %s: %v", name, s.Addr(), err)
	}
}

// Budget returns a budget name unique to this test and run: the test's name
// reduced to [A-Za-z0-9_-] plus a random suffix. It contains no braces,
// colons or spaces, so it can be the hash tag of keys ("sluice:{name}:bucket").
func Budget(t testing.TB) string {
	var b strings.Builder
	for _, r := range t.Name() {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		if b.Len() >= 48 {
			break
		}
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix) // never fails
	return b.String() + "-" + hex.EncodeToString(suffix)
}

// freePort returns a TCP port that is free on 127.0.0.1 right now. Callers
// retry if it is taken before they bind it.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitPing waits until the server at addr answers PING, polling every 50ms.
// alive, if not nil, reports an early death of the server.
func waitPing(ctx context.Context, addr string, alive func() error) error {
	for {
		err := ping(ctx, addr)
		if err == nil {
			return nil
		}
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not answer PING: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ping sends one PING over a fresh connection (no client, no pool: the
// server may be half started).
func ping(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if reply := strings.TrimSpace(string(buf[:n])); reply != "+PONG" {
		return fmt.Errorf("PING: %q", reply)
	}
	return nil
}
