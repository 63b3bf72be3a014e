package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/semaphore"
)

// failFirst answers the first n vendor requests with fail, then 200.
func failFirst(n int64, fail http.HandlerFunc) http.HandlerFunc {
	var seen atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		if seen.Add(1) <= n {
			fail(w, r)
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	}
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }
}

// hangUp closes the connection without an answer: a network error.
func hangUp(w http.ResponseWriter, r *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		_ = conn.Close()
	}
}

// TestRetried: each retryable failure is retried, with a fresh admission per
// attempt, the lease released before each backoff sleep (checked by the
// harness on every sleep), and the vendor only ever called with a lease held
// (checked by the harness on every vendor request).
func TestRetried(t *testing.T) {
	for _, c := range []struct {
		name string
		fail http.HandlerFunc
	}{
		{"500", status(500)},
		{"502", status(502)},
		{"503", status(503)},
		{"504", status(504)},
		{"408", status(408)},
		{"429", status(429)},
		{"network error", hangUp},
		{"call deadline", hang}, // SLUICE_CALL_TIMEOUT below
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, failFirst(2, c.fail), map[string]string{"SLUICE_CALL_TIMEOUT": "300ms", "SLUICE_REQUEST_TIMEOUT": "5s"})
			resp := h.chat()
			if body := readAll(t, resp); resp.StatusCode != 200 || body != `{"ok":true}` {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			if h.hits.Load() != 3 || h.adm.Acquires() != 3 {
				t.Errorf("%d vendor hits, %d admissions; want 3 and 3", h.hits.Load(), h.adm.Acquires())
			}
			if n := len(h.sleepRecords()); n != 2 {
				t.Errorf("%d backoff sleeps, want 2", n)
			}
			if l := h.lastAccess("/v1/chat/completions"); l["attempts"] != 3.0 {
				t.Errorf("access log: %v", l)
			}
		})
	}
}

func TestNotRetried(t *testing.T) {
	for _, code := range []int{400, 404, 413, 422} {
		h := newHarness(t, status(code), nil)
		resp := h.chat()
		resp.Body.Close()
		if resp.StatusCode != code || h.hits.Load() != 1 || len(h.sleepRecords()) != 0 {
			t.Errorf("vendor %d: answered %d after %d hits", code, resp.StatusCode, h.hits.Load())
		}
	}
}

func TestMaxAttempts(t *testing.T) {
	for _, n := range []int{1, 2, 5} {
		h := newHarness(t, status(503), map[string]string{"SLUICE_MAX_ATTEMPTS": fmt.Sprint(n)})
		apiErr(t, h.chat(), 502)
		if h.hits.Load() != int64(n) || len(h.sleepRecords()) != n-1 {
			t.Errorf("max %d: %d hits, %d sleeps", n, h.hits.Load(), len(h.sleepRecords()))
		}
	}
}

// TestBodyResent: the buffered body is sent again, whole, on every attempt.
func TestBodyResent(t *testing.T) {
	const body = `{"model":"m","messages":[{"role":"user","content":"same every time"}]}`
	bodies := make(chan string, 10)
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies <- string(b)
		w.WriteHeader(500)
	}, nil)
	h.do("POST", "/v1/chat/completions", body).Body.Close()
	close(bodies)
	n := 0
	for b := range bodies {
		n++
		if b != body {
			t.Errorf("attempt %d sent %q", n, b)
		}
	}
	if n != 3 {
		t.Errorf("%d attempts", n)
	}
}

func TestNoRetryAfterQueueTimeout(t *testing.T) {
	h := newHarness(t, status(500), nil)
	h.adm.set(func(a *fakeAdmitter) { a.script = []error{nil, fmt.Errorf("wrapped: %w", semaphore.ErrQueueTimeout)} })
	resp := h.chat()
	if e := apiErr(t, resp, 503); e.Error.Code != "queue_timeout" {
		t.Errorf("%+v", e.Error)
	}
	if h.hits.Load() != 1 || h.adm.Acquires() != 2 || len(h.sleepRecords()) != 1 {
		t.Errorf("%d hits, %d admissions, %d sleeps; want 1, 2, 1", h.hits.Load(), h.adm.Acquires(), len(h.sleepRecords()))
	}
}

func TestVendorRetryAfterHonoured(t *testing.T) {
	for _, c := range []struct {
		header, value string
		want          time.Duration
	}{
		{"Retry-After", "2", 2 * time.Second},
		{"Retry-After", "1.5", 1500 * time.Millisecond},
		{"Retry-After-Ms", "700", 700 * time.Millisecond},
		{"Retry-After", time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat), time.Second}, // 1s resolution
	} {
		h := newHarness(t, failFirst(1, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(c.header, c.value)
			w.WriteHeader(429)
		}), nil)
		if resp := h.chat(); resp.StatusCode != 200 {
			t.Fatalf("%s: %d", c.value, resp.StatusCode)
		}
		s := h.sleepRecords()
		if len(s) != 1 || s[0].d < c.want {
			t.Errorf("%s: %s: sleeps %v, want one of at least %s", c.header, c.value, s, c.want)
		}
	}
}

// TestNoRetryWithoutTime: no retry when the request deadline, after the
// backoff (or the vendor's Retry-After), leaves less than a call deadline.
func TestNoRetryWithoutTime(t *testing.T) {
	t.Run("vendor Retry-After beyond the SLA", func(t *testing.T) {
		h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(429)
		}, map[string]string{"SLUICE_REQUEST_TIMEOUT": "5s", "SLUICE_CALL_TIMEOUT": "1s"})
		start := time.Now()
		e := apiErr(t, h.chat(), 502)
		if !strings.Contains(e.Error.Message, "429") || time.Since(start) > 2*time.Second {
			t.Errorf("%+v after %s", e.Error, time.Since(start))
		}
		if h.hits.Load() != 1 || len(h.sleepRecords()) != 0 {
			t.Errorf("%d hits, %d sleeps", h.hits.Load(), len(h.sleepRecords()))
		}
	})
	t.Run("a slow failure leaves less than a call deadline", func(t *testing.T) {
		h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(600 * time.Millisecond) // a slow vendor, not synchronisation
			w.WriteHeader(500)
		}, map[string]string{"SLUICE_REQUEST_TIMEOUT": "2s", "SLUICE_CALL_TIMEOUT": "1500ms"})
		e := apiErr(t, h.chat(), 502)
		if !strings.Contains(e.Error.Message, "no time") {
			t.Errorf("%+v", e.Error)
		}
		if h.hits.Load() != 1 || len(h.sleepRecords()) != 0 {
			t.Errorf("%d hits, %d sleeps", h.hits.Load(), len(h.sleepRecords()))
		}
	})
}

func TestNoRetryAfterClientCancel(t *testing.T) {
	arrived := make(chan struct{})
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		hang(w, r)
		w.WriteHeader(500)
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	req, _ := http.NewRequestWithContext(ctx, "POST", h.gw.URL+"/v1/chat/completions", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer k1")
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	h.adm.waitReleased(t)
	if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "client_closed_request" || l["status"] != 499.0 {
		t.Errorf("access log %v", l)
	}
	if h.hits.Load() != 1 || len(h.sleepRecords()) != 0 {
		t.Errorf("%d hits, %d sleeps", h.hits.Load(), len(h.sleepRecords()))
	}
}

func TestLeaseLost(t *testing.T) {
	t.Run("before sending: the vendor is not called", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		h.adm.set(func(a *fakeAdmitter) { a.lostNext = true })
		if resp := h.chat(); resp.StatusCode != 200 {
			t.Fatalf("%d", resp.StatusCode)
		}
		if h.hits.Load() != 1 || h.adm.Acquires() != 2 {
			t.Errorf("%d hits, %d admissions; want 1, 2", h.hits.Load(), h.adm.Acquires())
		}
	})
	t.Run("during the call: the call is cut and retried", func(t *testing.T) {
		var adm atomic.Pointer[fakeAdmitter]
		h := newHarness(t, failFirst(1, func(w http.ResponseWriter, r *http.Request) {
			adm.Load().loseAll()
			hang(w, r)
		}), nil)
		adm.Store(h.adm)
		if resp := h.chat(); resp.StatusCode != 200 {
			t.Fatalf("%d", resp.StatusCode)
		}
		if h.hits.Load() != 2 {
			t.Errorf("%d hits", h.hits.Load())
		}
	})
}
