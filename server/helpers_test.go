package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/semaphore"
)

// fakeAdmitter is an in-memory admitter of size slots. It records how many
// leases are held, so tests can check that the vendor is only called with a
// lease held and that backoff sleeps happen with none held.
type fakeAdmitter struct {
	slots    chan struct{}
	released chan struct{} // one value per Release
	entered  chan struct{} // one value per Acquire, sent before it waits

	mu       sync.Mutex
	script   []error // errors of the next Acquire calls, in order; nil = admit
	lostNext bool    // the next lease is lost on arrival
	panics   bool    // Acquire panics
	checkErr error
	checks   int
	held     int
	acquires int
	leases   map[*fakeLease]bool
	closed   bool
	// lateReleases counts releases once Close began, its own included:
	// leases their requests did not release in time.
	lateReleases int
}

func newFakeAdmitter(size int) *fakeAdmitter {
	return &fakeAdmitter{
		slots:    make(chan struct{}, size),
		released: make(chan struct{}, 1000),
		entered:  make(chan struct{}, 1000),
		leases:   map[*fakeLease]bool{},
	}
}

func (a *fakeAdmitter) Acquire(ctx context.Context) (vendorLease, error) {
	a.mu.Lock()
	a.acquires++
	var err error
	if len(a.script) > 0 {
		err, a.script = a.script[0], a.script[1:]
	}
	lost, panics := a.lostNext, a.panics
	a.lostNext = false
	a.mu.Unlock()
	if panics {
		panic("fake admitter: boom")
	}
	if err != nil {
		return nil, err
	}
	select {
	case a.entered <- struct{}{}:
	default:
	}
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("fake: %w", semaphore.ErrQueueTimeout)
		}
		return nil, ctx.Err()
	}
	l := &fakeLease{a: a}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if lost {
		l.cancel()
	}
	a.mu.Lock()
	a.held++
	a.leases[l] = true
	a.mu.Unlock()
	return l, nil
}

func (a *fakeAdmitter) Check(context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.checks++
	return a.checkErr
}

func (a *fakeAdmitter) Close() error {
	a.mu.Lock()
	a.closed = true
	leases := make([]*fakeLease, 0, len(a.leases))
	for l := range a.leases {
		leases = append(leases, l)
	}
	a.mu.Unlock()
	for _, l := range leases {
		_ = l.Release(context.Background())
	}
	return nil
}

// Held returns the number of leases held now.
func (a *fakeAdmitter) Held() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}

func (a *fakeAdmitter) Acquires() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.acquires
}

// loseAll ends every held lease as if it expired, without releasing it.
func (a *fakeAdmitter) loseAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for l := range a.leases {
		l.cancel()
	}
}

func (a *fakeAdmitter) set(f func(a *fakeAdmitter)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}

// waitReleased waits until no lease is held, failing the test after 5s.
func (a *fakeAdmitter) waitReleased(t *testing.T) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for a.Held() > 0 {
		select {
		case <-a.released:
		case <-timeout:
			t.Fatalf("%d lease(s) still held", a.Held())
		}
	}
}

type fakeLease struct {
	a      *fakeAdmitter
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

func (l *fakeLease) Context() context.Context { return l.ctx }
func (l *fakeLease) Held() bool               { return l.ctx.Err() == nil }

func (l *fakeLease) Release(context.Context) error {
	l.once.Do(func() {
		l.cancel()
		l.a.mu.Lock()
		l.a.held--
		delete(l.a.leases, l)
		if l.a.closed {
			l.a.lateReleases++
		}
		l.a.mu.Unlock()
		<-l.a.slots
		select {
		case l.a.released <- struct{}{}:
		default: // nobody is waiting: a fuzz run releases thousands
		}
	})
	return nil
}

// hang is a vendor that never answers: it waits until the gateway gives up
// the call. It reads the body first: only then does net/http watch the
// connection and cancel the request's context when it closes.
func hang(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	<-r.Context().Done()
}

// harness is a gateway in front of a test vendor: with a fake admitter and
// miniredis (newHarness), or with the real semaphore on real Redis
// (newRealHarness). It checks, whatever the test, that the vendor is only
// called while a lease is held and that no backoff sleep holds one.
type harness struct {
	t      testing.TB
	srv    *gateway
	gw     *httptest.Server
	vendor *httptest.Server
	adm    *fakeAdmitter        // newHarness only
	redis  *miniredis.Miniredis // newHarness only
	logs   *syncBuffer
	// held counts the leases held now; -1 if it cannot tell.
	held func() int

	hits         atomic.Int64 // requests the vendor received
	heldAtVendor atomic.Int64 // vendor requests that arrived while no lease was held

	mu     sync.Mutex
	sleeps []sleepRecord
}

type sleepRecord struct {
	d    time.Duration
	held int // leases held while sleeping
}

// testEnv is the configuration of every harness: fast backoffs, short
// deadlines; tests override what they exercise.
var testEnv = map[string]string{
	"SLUICE_RATE":             "100/s",
	"SLUICE_QUEUE_TIMEOUT":    "1s",
	"SLUICE_CALL_TIMEOUT":     "2s",
	"SLUICE_REQUEST_TIMEOUT":  "10s",
	"SLUICE_BACKOFF_BASE":     "1ms",
	"SLUICE_BACKOFF_MAX":      "5ms",
	"SLUICE_UPSTREAM_API_KEY": vendorKey,
	"SLUICE_API_KEYS":         "k1,k2",
}

const vendorKey = "vendor-secret-key"

// testConfig is testEnv plus env, with a placeholder upstream.
func testConfig(t testing.TB, env map[string]string) Config {
	t.Helper()
	vars := map[string]string{"SLUICE_UPSTREAM_URL": "http://vendor.invalid"}
	maps.Copy(vars, testEnv)
	maps.Copy(vars, env)
	cfg, err := LoadConfig(func(name string) (string, bool) { v, ok := vars[name]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// newHarness starts vendor (nil: 200 {"ok":true}) behind a gateway
// configured by testEnv plus env, with a fake admitter and miniredis.
func newHarness(t testing.TB, vendor http.HandlerFunc, env map[string]string) *harness {
	t.Helper()
	cfg := testConfig(t, env)
	h := &harness{t: t, adm: newFakeAdmitter(cfg.Concurrency), redis: miniredis.RunT(t)}
	h.held = h.adm.Held
	rdb := redis.NewClient(&redis.Options{Addr: h.redis.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	h.start(cfg, rdb, h.adm, vendor)
	return h
}

// newRealHarness is newHarness with the real semaphore and token bucket on
// the Redis of SLUICE_REDIS_URL in env (default: redistest's shared server),
// in a budget of the test's own.
func newRealHarness(t *testing.T, vendor http.HandlerFunc, env map[string]string) *harness {
	t.Helper()
	env = maps.Clone(env)
	if env == nil {
		env = map[string]string{}
	}
	if env["SLUICE_REDIS_URL"] == "" {
		env["SLUICE_REDIS_URL"] = redistest.New(t).URL()
	}
	if env["SLUICE_BUDGET"] == "" {
		env["SLUICE_BUDGET"] = redistest.Budget(t)
	}
	cfg := testConfig(t, env)
	rdb, closeRedis, err := OpenRedis(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closeRedis() })
	probe, err := semaphore.New(rdb, cfg.Budget, semaphore.Options{Size: cfg.Concurrency})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = probe.Close() })
	h := &harness{t: t}
	h.held = func() int {
		st, err := probe.State(context.Background())
		if err != nil {
			return -1
		}
		return int(st.Holders)
	}
	h.start(cfg, rdb, nil, vendor)
	return h
}

func (h *harness) start(cfg Config, rdb redis.UniversalClient, adm admitter, vendor http.HandlerFunc) {
	t := h.t
	h.logs = newSyncBuffer()
	if vendor == nil {
		vendor = func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, `{"ok":true}`) }
	}
	h.vendor = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.hits.Add(1)
		if h.held() == 0 {
			h.heldAtVendor.Add(1)
		}
		vendor(w, r)
	}))
	t.Cleanup(h.vendor.Close)
	cfg.UpstreamURL, _ = url.Parse(h.vendor.URL)
	log := slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	h.srv, err = newGateway(cfg, gatewayOptions{Redis: rdb, admitter: adm, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h.srv.sleep = func(ctx context.Context, d time.Duration) error {
		h.mu.Lock()
		// Leases held through their cancel grace are the vendor's, not the
		// sleeper's: it still counts the call the gateway cancelled.
		held := h.held() - int(h.srv.graceHeld())
		h.sleeps = append(h.sleeps, sleepRecord{d: d, held: held})
		h.mu.Unlock()
		return ctx.Err()
	}
	h.gw = httptest.NewServer(h.srv)
	t.Cleanup(func() {
		h.gw.Close()
		_ = h.srv.Close()
		if n := h.heldAtVendor.Load(); n > 0 {
			t.Errorf("the vendor received %d request(s) while no lease was held", n)
		}
		for _, s := range h.sleepRecords() {
			if s.held > 0 {
				t.Errorf("a backoff sleep of %s ran with %d lease(s) held", s.d, s.held)
			}
		}
	})
}

// graceHeld returns the leases held now through their cancel grace.
func (s *gateway) graceHeld() float64 {
	families, err := s.metrics.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, f := range families {
		if f.GetName() == "sluice_cancel_grace_leases" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	panic("no sluice_cancel_grace_leases")
}

func (h *harness) sleepRecords() []sleepRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]sleepRecord(nil), h.sleeps...)
}

// do sends a request to the gateway with the client key "k1" unless header
// sets Authorization.
func (h *harness) do(method, path, body string, header ...string) *http.Response {
	h.t.Helper()
	return h.doCtx(context.Background(), method, path, body, header...)
}

func (h *harness) doCtx(ctx context.Context, method, path, body string, header ...string) *http.Response {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.gw.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer k1")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp
}

// chat posts a small non-streaming chat completion.
func (h *harness) chat(header ...string) *http.Response {
	h.t.Helper()
	return h.do("POST", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, header...)
}

// apiErr reads an error answer and checks its OpenAI shape and status.
func apiErr(t *testing.T, resp *http.Response, status int) errorBody {
	t.Helper()
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, raw)
	}
	var e errorBody
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error.Message == "" || e.Error.Type == "" || e.Error.Code == "" {
		t.Fatalf("not an OpenAI error shape: %s (%v)", raw, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	return e
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// accessLog returns the access log records of the gateway.
func (h *harness) accessLog() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(h.logs.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "request" {
			out = append(out, m)
		}
	}
	return out
}

// lastAccess waits for the access log record of the last request on path:
// the gateway logs after the client has its answer.
func (h *harness) lastAccess(path string) map[string]any {
	h.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		recs := h.accessLog()
		for i := len(recs) - 1; i >= 0; i-- {
			if recs[i]["path"] == path {
				return recs[i]
			}
		}
		select {
		case <-h.logs.wrote:
		case <-deadline:
			h.t.Fatalf("no access log record for %s in:\n%s", path, h.logs.String())
		}
	}
}

// syncBuffer is a log destination that signals each write.
type syncBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{wrote: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.wrote <- struct{}{}:
	default:
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
