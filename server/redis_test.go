package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/semaphore"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// TestRealAdmission: the gateway on the real semaphore and token bucket; the
// harness checks that the vendor sees every call with a lease held.
func TestRealAdmission(t *testing.T) {
	h := newRealHarness(t, nil, nil)
	for range 3 {
		if resp := h.chat(); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, readAll(t, resp))
		}
	}
	if h.held() != 0 {
		t.Errorf("%d leases left", h.held())
	}
}

// TestRealQueueTimeout: with the only slot taken, a request gets 503 at its
// queue deadline, and the vendor never sees it.
func TestRealQueueTimeout(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	h := newRealHarness(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}, map[string]string{"SLUICE_CONCURRENCY": "1", "SLUICE_QUEUE_TIMEOUT": "300ms"})
	first := make(chan int, 1)
	go func() {
		resp := h.chat()
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-arrived
	start := time.Now()
	resp := h.chat()
	if e := apiErr(t, resp, 503); e.Error.Code != "queue_timeout" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("%+v %v", e.Error, resp.Header)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("answered after %s", d)
	}
	close(release)
	if code := <-first; code != 200 || h.hits.Load() != 1 {
		t.Errorf("first request %d, %d vendor hits", code, h.hits.Load())
	}
}

// TestRealRateEarlyFail: when the next token comes after the queue deadline,
// the gateway answers 503 at once rather than waiting the deadline out.
func TestRealRateEarlyFail(t *testing.T) {
	h := newRealHarness(t, nil, map[string]string{"SLUICE_RATE": "1/m", "SLUICE_QUEUE_TIMEOUT": "3s"})
	readAll(t, h.chat())
	start := time.Now()
	apiErr(t, h.chat(), 503)
	if d := time.Since(start); d > time.Second {
		t.Errorf("waited %s for a token known to come after the queue deadline", d)
	}
	if h.hits.Load() != 1 {
		t.Errorf("%d vendor hits", h.hits.Load())
	}
}

func TestRealUserLimit(t *testing.T) {
	h := newRealHarness(t, nil, map[string]string{"SLUICE_USER_RATE": "2/m"})
	for i := range 2 {
		resp := h.chat()
		readAll(t, resp)
		if resp.StatusCode != 200 || resp.Header.Get("RateLimit-Remaining") != strconv.Itoa(1-i) {
			t.Fatalf("request %d: %d %v", i, resp.StatusCode, resp.Header)
		}
	}
	resp := h.chat()
	if e := apiErr(t, resp, 429); e.Error.Code != "rate_limit_exceeded" {
		t.Errorf("%+v", e.Error)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	for _, name := range []string{"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"} {
		if resp.Header.Get(name) == "" {
			t.Errorf("no %s", name)
		}
	}
	if resp := h.chat("Authorization", "Bearer k2"); resp.StatusCode != 200 {
		t.Errorf("another key was limited: %d", resp.StatusCode)
	}
	if h.hits.Load() != 3 {
		t.Errorf("%d vendor hits", h.hits.Load())
	}
	if got := metricValue(t, h, "sluice_user_rejections_total"); got != "1" {
		t.Errorf("rejections %q", got)
	}
	// The raw key never reaches Redis, nor the log.
	if strings.Contains(h.logs.String(), "k1") || strings.Contains(h.logs.String(), vendorKey) {
		t.Errorf("a key was logged:\n%s", h.logs.String())
	}
}

// TestUserIdentity: without auth the identity is the client IP, and
// X-Forwarded-For counts only with SLUICE_TRUST_PROXY.
func TestUserIdentity(t *testing.T) {
	env := map[string]string{"SLUICE_USER_RATE": "1/m", "SLUICE_API_KEYS": ""}
	h := newRealHarness(t, nil, env)
	readAll(t, h.chat("X-Forwarded-For", "10.0.0.1"))
	apiErr(t, h.chat("X-Forwarded-For", "10.0.0.2"), 429) // same peer, same identity

	env["SLUICE_TRUST_PROXY"] = "true"
	h = newRealHarness(t, nil, env)
	readAll(t, h.chat("X-Forwarded-For", "203.0.113.1"))
	if resp := h.chat("X-Forwarded-For", "203.0.113.2"); resp.StatusCode != 200 {
		t.Errorf("another client behind the proxy was limited: %d", resp.StatusCode)
	}
	apiErr(t, h.chat("X-Forwarded-For", "203.0.113.1"), 429)
}

// TestRedisUnreachable: fail closed, fast, with a metric; not ready.
func TestRedisUnreachable(t *testing.T) {
	for op, env := range map[string]map[string]string{
		"admit":      {"SLUICE_REDIS_URL": "redis://127.0.0.1:1"},
		"user_limit": {"SLUICE_REDIS_URL": "redis://127.0.0.1:1", "SLUICE_USER_RATE": "10/s"},
	} {
		h := newRealHarness(t, nil, env)
		start := time.Now()
		if e := apiErr(t, h.chat(), 503); e.Error.Code != "backend_unavailable" {
			t.Errorf("%s: %+v", op, e.Error)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: took %s", op, d)
		}
		resp, _ := http.Get(h.gw.URL + "/readyz")
		apiErr(t, resp, 503)
		if got := metricValue(t, h, `sluice_redis_errors_total{op="`+op+`"}`); got != "1" {
			t.Errorf("%s: redis errors %q", op, got)
		}
		if h.hits.Load() != 0 {
			t.Errorf("%s: the vendor was called", op)
		}
	}
}

// TestRedisRecovers: with Redis frozen, requests fail closed and readiness
// is red; once it is back, both recover by themselves.
func TestRedisRecovers(t *testing.T) {
	srv := redistest.NewIsolated(t)
	h := newRealHarness(t, nil, map[string]string{"SLUICE_REDIS_URL": srv.URL(), "SLUICE_QUEUE_TIMEOUT": "5s"})
	readAll(t, h.chat())
	srv.Pause(t)
	start := time.Now()
	apiErr(t, h.chat(), 503)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %s to fail", d)
	}
	resp, _ := http.Get(h.gw.URL + "/readyz")
	apiErr(t, resp, 503)
	srv.Unpause(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(h.gw.URL + "/readyz")
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready again 10s after Redis came back")
		}
		time.Sleep(50 * time.Millisecond) // polling readiness, as a load balancer does
	}
	if resp := h.chat(); resp.StatusCode != 200 {
		t.Errorf("after recovery: %d", resp.StatusCode)
	}
}

// TestRedisSilentAtQueueDeadline: a request queued for the only slot whose
// queue deadline passes while Redis does not answer fails closed (503 with
// Retry-After) at its deadline, not later.
func TestRedisSilentAtQueueDeadline(t *testing.T) {
	srv := redistest.NewIsolated(t)
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	h := newRealHarness(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}, map[string]string{"SLUICE_REDIS_URL": srv.URL(), "SLUICE_CONCURRENCY": "1", "SLUICE_QUEUE_TIMEOUT": "1s"})
	first := make(chan int, 1)
	go func() {
		resp := h.chat()
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-arrived
	second := make(chan *http.Response, 1)
	start := time.Now()
	go func() { second <- h.chat() }()
	time.Sleep(300 * time.Millisecond) // the second request queues; then Redis goes silent
	srv.Pause(t)
	resp := <-second
	took := time.Since(start)
	srv.Unpause(t)
	close(release)
	// Fail closed at the queue deadline, never later. The waiter cannot
	// tell a silent store from a full budget: either code will do.
	if e := apiErr(t, resp, 503); (e.Error.Code != "backend_unavailable" && e.Error.Code != "queue_timeout") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("%+v %v", e.Error, resp.Header)
	}
	if took > time.Second+250*time.Millisecond {
		t.Errorf("answered %s after it was sent, queue timeout 1s", took)
	}
	if code := <-first; code != 200 {
		t.Errorf("first request %d", code)
	}
}

// TestQueueDeadlineStoreOrBudget: at the queue deadline the answer says
// whether the store failed or did not answer a call (backend_unavailable) or
// the budget was full (queue_timeout), from the admitter's error. Both carry
// Retry-After; only the first counts as a Redis error.
func TestQueueDeadlineStoreOrBudget(t *testing.T) {
	for _, c := range []struct {
		name    string
		acquire error // the admitter's error; nil: it waits out the deadline
		code    string
	}{
		{"the store did not answer a call", fmt.Errorf("%w: %w: i/o timeout", semaphore.ErrQueueTimeout, semaphore.ErrUnavailable), "backend_unavailable"},
		{"the store fails", fmt.Errorf("%w: acquire: connection refused", semaphore.ErrUnavailable), "backend_unavailable"},
		{"waited out", nil, "queue_timeout"},
		{"known in advance", fmt.Errorf("%w: next token in 2s", semaphore.ErrQueueTimeout), "queue_timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, nil, map[string]string{"SLUICE_CONCURRENCY": "1", "SLUICE_QUEUE_TIMEOUT": "400ms"})
			h.adm.slots <- struct{}{} // the only slot is taken
			h.adm.set(func(a *fakeAdmitter) {
				if c.acquire != nil {
					a.script = []error{c.acquire}
				}
			})
			start := time.Now()
			resp := h.chat()
			took := time.Since(start)
			if e := apiErr(t, resp, 503); e.Error.Code != c.code || resp.Header.Get("Retry-After") == "" {
				t.Errorf("%+v %v; want %s", e.Error, resp.Header, c.code)
			}
			if c.acquire == nil && (took < 400*time.Millisecond || took > 700*time.Millisecond) {
				t.Errorf("answered after %s, queue timeout 400ms", took)
			}
			want := "1"
			if c.code == "queue_timeout" {
				want = "0"
			}
			if got := metricValue(t, h, `sluice_redis_errors_total{op="admit"}`); got != want && !(want == "0" && got == "") {
				t.Errorf("redis errors %q, want %s", got, want)
			}
		})
	}
}

// TestEmbeddedRedis: without SLUICE_REDIS_URL the gateway runs on an
// in-process Redis that runs the scripts and expires keys, with a warning.
func TestEmbeddedRedis(t *testing.T) {
	cfg := testConfig(t, nil)
	var logs bytes.Buffer
	rdb, closeRedis, err := OpenRedis(cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	if !strings.Contains(logs.String(), `"level":"WARN"`) || !strings.Contains(logs.String(), "NOT share") {
		t.Errorf("no warning: %s", logs.String())
	}
	ctx := context.Background()
	if err := rdb.Set(ctx, "ttl-probe", "x", 20*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); rdb.Exists(ctx, "ttl-probe").Val() == 1; {
		if time.Now().After(deadline) {
			t.Fatal("keys do not expire on the embedded Redis")
		}
		time.Sleep(10 * time.Millisecond) // waiting for a TTL: there is no signal
	}

	vendor := httptest.NewServer(openaiVendor)
	defer vendor.Close()
	cfg.UpstreamURL, _ = url.Parse(vendor.URL)
	s, err := newGateway(cfg, gatewayOptions{Redis: rdb, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, body := range []string{`{"model":"m"}`, streamBody} {
		req, _ := http.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer k1")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Errorf("%s: %d %s", body, rec.Code, rec.Body)
		}
	}
	req, _ := http.NewRequest("GET", "/readyz", nil)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Errorf("readyz %d %s", rec.Code, rec.Body)
	}
	_, _ = io.Copy(io.Discard, rec.Body)
}

// TestRedisCluster: SLUICE_REDIS_MODE=cluster with the other nodes as
// ?addr= runs the same gateway on a Redis Cluster, per-user limit included.
func TestRedisCluster(t *testing.T) {
	addrs := redistest.NewCluster(t).Addrs()
	u := "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
	h := newRealHarness(t, openaiVendor, map[string]string{
		"SLUICE_REDIS_URL": u, "SLUICE_REDIS_MODE": "cluster", "SLUICE_USER_RATE": "2/m",
	})
	for _, body := range []string{`{"model":"m"}`, streamBody} {
		if resp := h.do("POST", "/v1/chat/completions", body); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", body, resp.StatusCode, readAll(t, resp))
		} else {
			readAll(t, resp)
		}
	}
	apiErr(t, h.chat(), 429)
	if resp, _ := http.Get(h.gw.URL + "/readyz"); resp.StatusCode != 200 {
		t.Errorf("readyz %d", resp.StatusCode)
	}
}
