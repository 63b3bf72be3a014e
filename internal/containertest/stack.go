package containertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/sluicehq/sluice/internal/load"
	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/redisstate"
)

// Images used when SLUICE_IMAGE and REDIS_IMAGE are unset.
const (
	DefaultImage      = "sluice:local"
	DefaultRedisImage = "redis:7-alpine"
)

// Keys and names every Stack uses.
const (
	// ClientKey is the client key the gateways accept.
	ClientKey = "containertest-client-key"
	// Budget is the name of the budget the gateways share.
	Budget = "ct"

	vendorKey   = "containertest-vendor-key"
	gatewayPort = "8080/tcp"
	vendorPort  = "9090/tcp"
	redisPort   = "6379/tcp"

	startTimeout = 2 * time.Minute
)

// Options configure a Stack. Zero fields take the default in brackets.
type Options struct {
	// Replicas is the number of gateway replicas [3].
	Replicas int
	// Rate is the vendor rate R, per second (SLUICE_RATE) [20].
	Rate int
	// Burst is B (SLUICE_BURST) [4].
	Burst int
	// Concurrency is C (SLUICE_CONCURRENCY) [3].
	Concurrency int
	// LeaseTTL is SLUICE_LEASE_TTL [2s].
	LeaseTTL time.Duration
	// QueueTimeout is SLUICE_QUEUE_TIMEOUT [1s].
	QueueTimeout time.Duration
	// CallTimeout is SLUICE_CALL_TIMEOUT [5s].
	CallTimeout time.Duration
	// RequestTimeout is SLUICE_REQUEST_TIMEOUT [15s].
	RequestTimeout time.Duration
	// MaxAttempts is SLUICE_MAX_ATTEMPTS [3].
	MaxAttempts int
	// ShutdownTimeout is SLUICE_SHUTDOWN_TIMEOUT [10s].
	ShutdownTimeout time.Duration
	// VendorLatency is the mock vendor's latency, fixed ("100ms") or a
	// range ("80ms-120ms") [100ms].
	VendorLatency string
}

func (o *Options) fill() {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	defD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	def(&o.Replicas, 3)
	def(&o.Rate, 20)
	def(&o.Burst, 4)
	def(&o.Concurrency, 3)
	def(&o.MaxAttempts, 3)
	defD(&o.LeaseTTL, 2*time.Second)
	defD(&o.QueueTimeout, time.Second)
	defD(&o.CallTimeout, 5*time.Second)
	defD(&o.RequestTimeout, 15*time.Second)
	defD(&o.ShutdownTimeout, 10*time.Second)
	if o.VendorLatency == "" {
		o.VendorLatency = "100ms"
	}
}

// Limit returns the budget's most vendor calls per second at a vendor
// latency lat: min(R, C/lat), the bound of I5.
func (o Options) Limit(lat time.Duration) float64 {
	return min(float64(o.Rate), float64(o.Concurrency)/lat.Seconds())
}

// Latency returns the mean of the vendor's latency range VendorLatency.
func (o Options) Latency() time.Duration {
	lo, hi, isRange := strings.Cut(o.VendorLatency, "-")
	a, err := time.ParseDuration(lo)
	if err != nil {
		panic("containertest: bad VendorLatency " + o.VendorLatency)
	}
	if !isRange {
		return a
	}
	b, err := time.ParseDuration(hi)
	if err != nil {
		panic("containertest: bad VendorLatency " + o.VendorLatency)
	}
	return (a + b) / 2
}

// Stack is a running system: Redis, a mock vendor and gateway replicas on
// one Docker network. Everything is removed when the test ends.
type Stack struct {
	Options
	// Redis, Vendor and Gateways are the containers. Redis.URL is a
	// redis:// URL, the others' an http:// base URL, all on the host.
	Redis    *Node
	Vendor   *Node
	Gateways []*Node
	// VendorStats reads and resets the vendor's statistics.
	VendorStats *mockvendor.Client

	t      testing.TB
	docker *testcontainers.DockerClient
	http   *http.Client
	client *load.Load // for Send

	mu  sync.Mutex
	rdb *redis.Client // the host's client of Redis; replaced on restart
}

// Node is one container of a Stack.
type Node struct {
	// Name is its alias on the stack's network (redis, vendor, gw1, ...).
	Name string
	// URL reaches it from the host.
	URL string
	// C is the container.
	C testcontainers.Container
}

// Start brings up a Stack for t, or skips t (see the package doc).
func Start(t testing.TB, opt Options) *Stack {
	t.Helper()
	opt.fill()
	image, redisImage := requireImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()

	s := &Stack{Options: opt, t: t, http: &http.Client{Transport: &http.Transport{Proxy: nil}}}
	var err error
	if s.docker, err = testcontainers.NewDockerClientWithOpts(ctx); err != nil {
		t.Fatalf("containertest: docker client: %v", err)
	}
	t.Cleanup(func() { s.docker.Close() })
	nw, err := network.New(ctx)
	testcontainers.CleanupNetwork(t, nw)
	if err != nil {
		t.Fatalf("containertest: network: %v", err)
	}
	began := time.Now()

	// Redis and the vendor first, in parallel; then the gateways, which
	// are ready only once they reach Redis.
	var redisErr, vendorErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		s.Redis, redisErr = s.run(ctx, nw, "redis", redisImage,
			// Both kinds of image take flags as CMD (the public one's
			// entrypoint prepends redis-server). No persistence: a
			// restart loses the state, as the fault tests want.
			[]string{"--protected-mode", "no", "--save", "", "--appendonly", "no"},
			nil, redisPort, wait.ForLog("Ready to accept connections"))
	})
	wg.Go(func() {
		s.Vendor, vendorErr = s.run(ctx, nw, "vendor", image, []string{"mockvendor"}, map[string]string{
			"SLUICE_MOCK_LISTEN":     ":9090",
			"SLUICE_MOCK_KEY":        vendorKey,
			"SLUICE_MOCK_LATENCY":    opt.VendorLatency,
			"SLUICE_HEALTHCHECK_URL": "http://127.0.0.1:9090/healthz",
		}, vendorPort, wait.ForHTTP("/healthz").WithPort(vendorPort))
	})
	wg.Wait()
	if err := errors.Join(redisErr, vendorErr); err != nil {
		t.Fatal(err)
	}
	if err := s.connectRedis(ctx); err != nil {
		t.Fatal(err)
	}
	if s.VendorStats, err = mockvendor.NewClient(s.Vendor.URL+"/stats", s.http, 0); err != nil {
		t.Fatal(err)
	}

	s.Gateways = make([]*Node, opt.Replicas)
	errs := make([]error, opt.Replicas)
	for i := range opt.Replicas {
		wg.Go(func() {
			s.Gateways[i], errs[i] = s.run(ctx, nw, fmt.Sprintf("gw%d", i+1), image, []string{"serve"},
				s.gatewayEnv(), gatewayPort, wait.ForHTTP("/readyz").WithPort(gatewayPort))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	s.client = s.newLoad(t, 1, s.Gateways)
	t.Logf("containertest: %s, %d x %s, vendor latency %s, R=%d/s B=%d C=%d lease TTL %s queue timeout %s (up in %s)",
		redisImage, opt.Replicas, image, opt.VendorLatency, opt.Rate, opt.Burst, opt.Concurrency,
		opt.LeaseTTL, opt.QueueTimeout, time.Since(began).Round(time.Millisecond))

	// Runs before the containers are removed (cleanups run last first).
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpLogs()
		}
	})
	return s
}

// requireImages returns the gateway and Redis images, or skips (fails with
// SLUICETEST_REQUIRE_DOCKER set) when Docker or the gateway image is missing.
func requireImages(t testing.TB) (image, redisImage string) {
	t.Helper()
	if testing.Short() {
		t.Skip("containertest: container tests are skipped with -short")
	}
	for k, v := range map[string]string{
		"TESTCONTAINERS_RYUK_DISABLED": "true",
		"TESTCONTAINERS_HOST_OVERRIDE": "127.0.0.1",
	} {
		if _, ok := os.LookupEnv(k); !ok {
			t.Setenv(k, v)
		}
	}
	image = cmpOr(os.Getenv("SLUICE_IMAGE"), DefaultImage)
	redisImage = cmpOr(os.Getenv("REDIS_IMAGE"), DefaultRedisImage)
	skip := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("SLUICETEST_REQUIRE_DOCKER") != "" {
			t.Fatal("containertest: SLUICETEST_REQUIRE_DOCKER is set, but " + msg)
		}
		t.Skip("containertest: " + msg + " (SLUICETEST_REQUIRE_DOCKER is unset: skipping)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := func() (cli *testcontainers.DockerClient, err error) {
		defer func() { // testcontainers panics when it finds no Docker host
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		return testcontainers.NewDockerClientWithOpts(ctx)
	}()
	if err != nil {
		skip("Docker is not available: %v", err)
	}
	defer cli.Close()
	if _, err := cli.ImageInspect(ctx, image); err != nil {
		skip("the gateway image %s is missing (build it: .ci/images.sh, or docker build -t %s .): %v", image, image, err)
	}
	return image, redisImage
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (s *Stack) gatewayEnv() map[string]string {
	o := s.Options
	return map[string]string{
		"SLUICE_LISTEN":           ":8080",
		"SLUICE_REDIS_URL":        "redis://redis:6379",
		"SLUICE_UPSTREAM_URL":     "http://vendor:9090",
		"SLUICE_UPSTREAM_API_KEY": vendorKey,
		"SLUICE_BUDGET":           Budget,
		"SLUICE_RATE":             fmt.Sprintf("%d/s", o.Rate),
		"SLUICE_BURST":            strconv.Itoa(o.Burst),
		"SLUICE_CONCURRENCY":      strconv.Itoa(o.Concurrency),
		"SLUICE_QUEUE_TIMEOUT":    o.QueueTimeout.String(),
		"SLUICE_CALL_TIMEOUT":     o.CallTimeout.String(),
		"SLUICE_REQUEST_TIMEOUT":  o.RequestTimeout.String(),
		"SLUICE_MAX_ATTEMPTS":     strconv.Itoa(o.MaxAttempts),
		"SLUICE_LEASE_TTL":        o.LeaseTTL.String(),
		"SLUICE_SHUTDOWN_TIMEOUT": o.ShutdownTimeout.String(),
		"SLUICE_API_KEYS":         ClientKey,
		"SLUICE_LOG_LEVEL":        "info",
		"SLUICE_FORWARD_HEADERS":  "X-Mock-Latency", // the slow request's, for the mock vendor
	}
}

// run starts a container on nw under alias name and returns it with the
// host URL of port.
func (s *Stack) run(ctx context.Context, nw *testcontainers.DockerNetwork, name, image string, cmd []string,
	env map[string]string, port string, ready wait.Strategy) (*Node, error) {
	c, err := testcontainers.Run(ctx, image,
		testcontainers.WithLogger(tclog.TestLogger(s.t)), // into the test's log, not stderr
		testcontainers.WithCmd(cmd...),
		testcontainers.WithEnv(env),
		testcontainers.WithExposedPorts(port),
		network.WithNetwork([]string{name}, nw),
		testcontainers.WithWaitStrategyAndDeadline(time.Minute, ready),
	)
	testcontainers.CleanupContainer(s.t, c)
	if c != nil {
		// A paused container cannot be stopped: thaw it first (this
		// cleanup runs before the one above).
		s.t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if st, err := c.State(ctx); err == nil && st.Paused {
				_, _ = s.docker.ContainerUnpause(ctx, c.GetContainerID(), client.ContainerUnpauseOptions{})
			}
		})
	}
	if err != nil {
		hint := ""
		if name == "redis" && os.Getenv("REDIS_IMAGE") == "" {
			hint = " (without a registry: build the offline image with .ci/images.sh and set REDIS_IMAGE=sluice-redis:local)"
		}
		return nil, fmt.Errorf("containertest: starting %s (%s)%s: %w", name, image, hint, err)
	}
	n := &Node{Name: name, C: c}
	if err := s.resolve(ctx, n, port); err != nil {
		return nil, err
	}
	return n, nil
}

// resolve sets n.URL from the host port mapped to port.
func (s *Stack) resolve(ctx context.Context, n *Node, port string) error {
	host, err := n.C.Host(ctx)
	if err != nil {
		return fmt.Errorf("containertest: %s: host: %w", n.Name, err)
	}
	p, err := n.C.MappedPort(ctx, port)
	if err != nil {
		return fmt.Errorf("containertest: %s: port: %w", n.Name, err)
	}
	scheme := "http://"
	if port == redisPort {
		scheme = "redis://"
	}
	n.URL = scheme + net.JoinHostPort(host, p.Port())
	return nil
}

// connectRedis (re)makes the host's Redis client and waits for PONG.
func (s *Stack) connectRedis(ctx context.Context) error {
	if err := s.resolve(ctx, s.Redis, redisPort); err != nil {
		return err
	}
	opt, err := redis.ParseURL(s.Redis.URL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	s.mu.Lock()
	old := s.rdb
	s.rdb = rdb
	s.mu.Unlock()
	if old != nil {
		old.Close()
	} else {
		s.t.Cleanup(func() { s.RedisClient().Close() })
	}
	return poll(ctx, 50*time.Millisecond, func() bool { return rdb.Ping(ctx).Err() == nil })
}

// RedisClient returns the host's client of the stack's Redis.
func (s *Stack) RedisClient() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rdb
}

// Keys are the Redis keys of the stack's budget.
var Keys = redisstate.For(Budget)

// RestartRedis stops Redis and starts it again, losing its state (no
// persistence), and returns once it answers PING.
func (s *Stack) RestartRedis(ctx context.Context) error {
	timeout := 2 * time.Second
	if err := s.Redis.C.Stop(ctx, &timeout); err != nil {
		return fmt.Errorf("containertest: stopping redis: %w", err)
	}
	if err := s.Redis.C.Start(ctx); err != nil {
		return fmt.Errorf("containertest: starting redis: %w", err)
	}
	return s.connectRedis(ctx)
}

// Pause freezes n's processes (docker pause).
func (s *Stack) Pause(ctx context.Context, n *Node) error {
	_, err := s.docker.ContainerPause(ctx, n.C.GetContainerID(), client.ContainerPauseOptions{})
	return err
}

// Unpause thaws n (docker unpause).
func (s *Stack) Unpause(ctx context.Context, n *Node) error {
	_, err := s.docker.ContainerUnpause(ctx, n.C.GetContainerID(), client.ContainerUnpauseOptions{})
	return err
}

// Signal sends sig ("SIGKILL", "SIGTERM") to n's main process (docker kill).
func (s *Stack) Signal(ctx context.Context, n *Node, sig string) error {
	_, err := s.docker.ContainerKill(ctx, n.C.GetContainerID(), client.ContainerKillOptions{Signal: sig})
	return err
}

// State returns n's container state.
func (s *Stack) State(ctx context.Context, n *Node) (*ContainerState, error) {
	info, err := n.C.Inspect(ctx)
	if err != nil {
		return nil, err
	}
	return &ContainerState{
		Running:      info.State.Running,
		Paused:       info.State.Paused,
		ExitCode:     info.State.ExitCode,
		StartedAt:    info.State.StartedAt,
		FinishedAt:   info.State.FinishedAt,
		RestartCount: info.RestartCount,
	}, nil
}

// ContainerState is what the tests need of docker inspect.
type ContainerState struct {
	Running, Paused       bool
	ExitCode              int
	StartedAt, FinishedAt string
	RestartCount          int
}

func (s *Stack) get(ctx context.Context, u string) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	body := resp.Body
	resp.Body = struct {
		io.Reader
		io.Closer
	}{body, closerFunc(func() error { cancel(); return body.Close() })}
	return resp, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// Ready reports whether gateway n answers /readyz with 200 within 3s.
func (s *Stack) Ready(ctx context.Context, n *Node) bool {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := s.get(ctx, n.URL+"/readyz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// WaitReady polls /readyz of every gateway in nodes until each answers as
// want (true: 200), for at most within; it returns how long that took.
func (s *Stack) WaitReady(ctx context.Context, want bool, within time.Duration, nodes ...*Node) (time.Duration, error) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Go(func() {
			if err := poll(ctx, 50*time.Millisecond, func() bool { return s.Ready(ctx, n) == want }); err != nil {
				errs[i] = fmt.Errorf("%s: /readyz not %s within %s", n.Name, map[bool]string{true: "200", false: "red"}[want], within)
			}
		})
	}
	wg.Wait()
	return time.Since(began), errors.Join(errs...)
}

// Metric returns the value of the unlabelled metric name on n's /metrics.
func (s *Stack) Metric(ctx context.Context, n *Node, name string) (float64, error) {
	resp, err := s.get(ctx, n.URL+"/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("containertest: %s: no metric %s", n.Name, name)
}

// poll calls cond every interval until it holds or ctx ends.
func poll(ctx context.Context, interval time.Duration, cond func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Within polls cond every 20ms for at most d and returns how long it took
// to hold, or an error.
func Within(ctx context.Context, d time.Duration, cond func() bool) (time.Duration, error) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := poll(ctx, 20*time.Millisecond, cond); err != nil {
		return time.Since(began), fmt.Errorf("not within %s", d)
	}
	return time.Since(began), nil
}

// dumpLogs logs the last lines of every container's output, and writes
// the whole of it to $CONTAINERTEST_LOG_DIR/<test>/<name>.log when set.
func (s *Stack) dumpLogs() {
	dir := os.Getenv("CONTAINERTEST_LOG_DIR")
	if dir != "" {
		dir = filepath.Join(dir, strings.ReplaceAll(s.t.Name(), "/", "_"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			s.t.Log(err)
			dir = ""
		}
	}
	nodes := append([]*Node{s.Redis, s.Vendor}, s.Gateways...)
	for _, n := range nodes {
		if n == nil {
			continue
		}
		s.t.Logf("--- last lines of %s:\n%s", n.Name, s.Logs(n, 40))
		if dir != "" {
			s.saveLogs(n, filepath.Join(dir, n.Name+".log"))
		}
	}
	if dir != "" {
		s.t.Logf("containers' logs in %s", dir)
	}
}

func (s *Stack) saveLogs(n *Node, path string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := n.C.Logs(ctx)
	if err != nil {
		s.t.Log(err)
		return
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		s.t.Log(err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, rc); err != nil {
		s.t.Log(err)
	}
}

// Logs returns the last n lines of n's output, without the access log
// lines of requests answered 200.
func (s *Stack) Logs(node *Node, n int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := node.C.Logs(ctx)
	if err != nil {
		return "(logs: " + err.Error() + ")"
	}
	defer rc.Close()
	var lines []string
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"outcome":"ok"`) {
			continue // the access log of answered requests says nothing
		}
		lines = append(lines, sc.Text())
		if len(lines) > 2*n {
			lines = append(lines[:0], lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
