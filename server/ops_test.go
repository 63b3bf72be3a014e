package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// metricValue returns the value of the sample line that starts with series
// in /metrics, or "" if there is none.
func metricValue(t *testing.T, h *harness, series string) string {
	t.Helper()
	resp, err := http.Get(h.gw.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(readAll(t, resp), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

func TestHealthAndReadiness(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.srv.ready.ttl = 0 // every probe checks
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(h.gw.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, `"status"`) {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	h.adm.set(func(a *fakeAdmitter) { a.checkErr = errors.New("NOSCRIPT secret detail") })
	resp, _ := http.Get(h.gw.URL + "/readyz")
	if e := apiErr(t, resp, 503); strings.Contains(e.Error.Message, "secret") {
		t.Errorf("%+v", e.Error)
	}
	h.adm.set(func(a *fakeAdmitter) { a.checkErr = nil })
	if resp, _ := http.Get(h.gw.URL + "/readyz"); resp.StatusCode != 200 {
		t.Errorf("not ready again: %d", resp.StatusCode)
	}
	h.redis.Close() // Redis down: ready goes red although the admitter is fine
	resp, _ = http.Get(h.gw.URL + "/readyz")
	apiErr(t, resp, 503)
	if got := metricValue(t, h, `sluice_redis_errors_total{op="ready"}`); got != "2" {
		t.Errorf("ready errors %q", got)
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, failFirst(1, status(500)), nil)
	readAll(t, h.chat())
	apiErr(t, h.chat("Authorization", "Bearer nope"), 401)
	for series, want := range map[string]string{
		`sluice_requests_total{outcome="ok"}`:                 "1",
		`sluice_requests_total{outcome="invalid_api_key"}`:    "1",
		`sluice_admissions_total{outcome="admitted"}`:         "2",
		`sluice_vendor_attempts_total{class="5xx"}`:           "1",
		`sluice_vendor_attempts_total{class="2xx"}`:           "1",
		`sluice_retries_total{reason="5xx"}`:                  "1",
		`sluice_queue_wait_seconds_count`:                     "2",
		`sluice_vendor_inflight`:                              "0",
		`sluice_request_duration_seconds_count{status="200"}`: "1",
		`sluice_request_duration_seconds_count{status="401"}`: "1",
		`sluice_user_rejections_total`:                        "0",
		`sluice_panics_total`:                                 "0",
	} {
		if got := metricValue(t, h, series); got != want {
			t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
	resp, _ := http.Get(h.gw.URL + "/metrics")
	body := readAll(t, resp)
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(body, "# TYPE "+name) {
			t.Errorf("no %s", name)
		}
	}
}

// TestPanic: a panic is answered with a clean error (no stack, no 500), the
// lease taken before it is released, and it is counted and logged.
func TestPanic(t *testing.T) {
	t.Run("before admission", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		h.adm.set(func(a *fakeAdmitter) { a.panics = true })
		e := apiErr(t, h.chat(), 503)
		if e.Error.Code != "internal_error" || strings.Contains(e.Error.Message, "boom") || strings.Contains(e.Error.Message, "goroutine") {
			t.Errorf("%+v", e.Error)
		}
		if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "panic" || l["status"] != 503.0 {
			t.Errorf("access log %v", l)
		}
		if !strings.Contains(h.logs.String(), "fake admitter: boom") || !strings.Contains(h.logs.String(), "goroutine") {
			t.Error("panic and stack not logged")
		}
		if got := metricValue(t, h, "sluice_panics_total"); got != "1" {
			t.Errorf("panics %q", got)
		}
	})
	t.Run("holding a lease", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		h.srv.adm = panicHeld{h.adm}
		apiErr(t, h.chat(), 503)
		h.adm.waitReleased(t)
	})
}

// panicHeld hands out leases whose Held panics.
type panicHeld struct{ *fakeAdmitter }

func (p panicHeld) Acquire(ctx context.Context) (vendorLease, error) {
	l, err := p.fakeAdmitter.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return panicLease{l}, nil
}

type panicLease struct{ vendorLease }

func (panicLease) Held() bool { panic("lease: boom") }

// TestGracefulShutdown: on cancellation Serve stops accepting, lets the
// request in flight finish, releases every lease and returns nil.
func TestGracefulShutdown(t *testing.T) {
	arrived, finish := make(chan struct{}), make(chan struct{})
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-finish
		w.Write([]byte(`{"late":true}`))
	}, map[string]string{"SLUICE_SHUTDOWN_TIMEOUT": "5s"})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &signalListener{Listener: inner, closed: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(ctx, ln) }()

	answered := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/v1/chat/completions", strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer k1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- err.Error()
			return
		}
		answered <- readAll(t, resp)
	}()
	<-arrived
	stop()
	<-ln.closed
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("still accepting after shutdown began")
	}
	close(finish)
	if got := <-answered; got != `{"late":true}` {
		t.Errorf("in-flight request: %q", got)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	h.adm.mu.Lock()
	closed, held := h.adm.closed, h.adm.held
	h.adm.mu.Unlock()
	if !closed || held != 0 {
		t.Errorf("admitter closed %v, %d leases held", closed, held)
	}
}

// TestShutdownCutsRequests: requests still running at the shutdown deadline
// are cut, not dropped: a request waiting for the vendor or for admission is
// answered 503 shutting_down in the OpenAI shape, a stream already under way
// ends cleanly, and each releases its own lease (after the cancel grace)
// before the admitter closes, so nothing is left for it or for the TTL.
func TestShutdownCutsRequests(t *testing.T) {
	var arrived sync.WaitGroup
	arrived.Add(3)
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), `"stream":true`) {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, sseChunk(0))
			w.(http.Flusher).Flush()
		}
		arrived.Done()
		<-r.Context().Done() // the vendor never finishes
	}, map[string]string{"SLUICE_CONCURRENCY": "3", "SLUICE_SHUTDOWN_TIMEOUT": "300ms", "SLUICE_QUEUE_TIMEOUT": "5s"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(ctx, ln) }()

	type answer struct {
		status int
		header http.Header
		body   string
		err    error
	}
	send := func(body string) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer k1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				ch <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			ch <- answer{resp.StatusCode, resp.Header, string(b), err}
		}()
		return ch
	}
	plain := []<-chan answer{send(`{"model":"m"}`), send(`{"model":"m"}`)}
	stream := send(streamBody)
	arrived.Wait()
	queued := send(`{"model":"m"}`) // no slot left: waits for admission
	for h.adm.Acquires() < 4 {
		time.Sleep(time.Millisecond) // polling: the fake admitter has no signal for a waiter
	}
	start := time.Now()
	stop()
	for i, ch := range append(plain, queued) {
		a := <-ch
		var e errorBody
		if a.err != nil || a.status != 503 || json.Unmarshal([]byte(a.body), &e) != nil || e.Error.Code != "shutting_down" ||
			e.Error.Type == "" || e.Error.Message == "" || a.header.Get("Retry-After") == "" {
			t.Errorf("request %d cut by the shutdown: %d %q %v %v", i, a.status, a.body, a.header, a.err)
		}
	}
	if a := <-stream; a.err != nil || a.status != 200 || a.body != sseChunk(0) {
		t.Errorf("stream cut by the shutdown: %d %q %v; want its first chunk, then a clean end", a.status, a.body, a.err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if d := time.Since(start); d > 300*time.Millisecond+cutWait {
		t.Errorf("Serve returned %s after the shutdown began", d)
	}
	h.adm.mu.Lock()
	closed, held, late := h.adm.closed, h.adm.held, h.adm.lateReleases
	h.adm.mu.Unlock()
	if !closed || held != 0 || late != 0 {
		t.Errorf("admitter closed %v, %d leases held, %d released only at or after Close", closed, held, late)
	}
	if n := h.hits.Load(); n != 3 {
		t.Errorf("%d vendor calls, want 3", n)
	}
	if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "shutting_down" && l["outcome"] != "stream_cut" {
		t.Errorf("access log %v", l)
	}
}

// TestRunShutdownCut: sluice serve cut at its shutdown deadline answers the
// request in flight, releases its lease while Redis is still open, and
// returns nil.
func TestRunShutdownCut(t *testing.T) {
	arrived := make(chan struct{}, 1)
	vendor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		<-r.Context().Done()
	}))
	defer vendor.Close()
	cfg := testConfig(t, map[string]string{"SLUICE_LISTEN": "127.0.0.1:0", "SLUICE_UPSTREAM_URL": vendor.URL, "SLUICE_SHUTDOWN_TIMEOUT": "200ms"})
	logs := newSyncBuffer()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	addr := listenAddr(t, logs, done)
	answered := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
		req.Header.Set("Authorization", "Bearer k1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- err.Error()
			return
		}
		answered <- strconv.Itoa(resp.StatusCode) + " " + readAll(t, resp)
	}()
	<-arrived
	stop()
	if got := <-answered; !strings.HasPrefix(got, "503 ") || !strings.Contains(got, `"shutting_down"`) {
		t.Errorf("request cut by the shutdown: %s", got)
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	for _, bad := range []string{"lease release failed", "client is closed", "closing with requests"} {
		if strings.Contains(logs.String(), bad) {
			t.Errorf("log has %q:\n%s", bad, logs.String())
		}
	}
}

// listenAddr waits for Run's "listening" log line and returns its address.
func listenAddr(t *testing.T, logs *syncBuffer, done <-chan error) string {
	t.Helper()
	for {
		select {
		case <-logs.wrote:
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		}
		for line := range strings.SplitSeq(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "sluice serve listening" {
				if addr, _ := m["addr"].(string); addr != "" {
					return addr
				}
			}
		}
	}
}

// signalListener closes closed when it is closed.
type signalListener struct {
	net.Listener
	closed chan struct{}
	once   sync.Once
}

func (l *signalListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.closed) })
	return err
}

// TestRun: sluice serve as a function: embedded Redis, listens, answers,
// and returns nil once its context ends (SIGTERM in the command).
func TestRun(t *testing.T) {
	vendor := httptest.NewServer(openaiVendor)
	defer vendor.Close()
	cfg := testConfig(t, map[string]string{"SLUICE_LISTEN": "127.0.0.1:0", "SLUICE_UPSTREAM_URL": vendor.URL})
	logs := newSyncBuffer()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	addr := listenAddr(t, logs, done)
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
	req.Header.Set("Authorization", "Bearer k1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "hello from the vendor") {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if !strings.Contains(logs.String(), "embedded in-process Redis") {
		t.Error("no warning about the embedded Redis")
	}
}

// The counters dashboards and alerts read exist at zero before their first
// event: an alert on a series that does not exist reads "no data".
func TestCountersExistFromTheStart(t *testing.T) {
	h := newHarness(t, nil, nil)
	for _, series := range []string{
		`sluice_retries_total{reason="5xx"}`, `sluice_retries_total{reason="call_timeout"}`,
		`sluice_redis_errors_total{op="admit"}`, `sluice_redis_errors_total{op="release"}`,
		`sluice_redis_errors_total{op="ready"}`, `sluice_redis_errors_total{op="user_limit"}`,
		`sluice_admissions_total{outcome="queue_timeout"}`, `sluice_vendor_attempts_total{class="5xx"}`,
		`sluice_load_rejections_total{code="overloaded"}`, `sluice_connection_limit_total{action="refused"}`,
		`sluice_requests_total{outcome="ok"}`,
	} {
		if got := metricValue(t, h, series); got != "0" {
			t.Errorf("%s on a fresh gateway: %q, want 0", series, got)
		}
	}
}
