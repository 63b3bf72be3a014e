package server

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
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

func (p panicHeld) Acquire(ctx context.Context) (Lease, error) {
	l, err := p.fakeAdmitter.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return panicLease{l}, nil
}

type panicLease struct{ Lease }

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
	var addr string
	for addr == "" {
		select {
		case <-logs.wrote:
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		}
		for line := range strings.SplitSeq(logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "sluice serve listening" {
				addr, _ = m["addr"].(string)
			}
		}
	}
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
