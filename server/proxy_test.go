package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/guarded"
)

func TestForwardsToVendor(t *testing.T) {
	type seen struct {
		r    *http.Request
		body string
	}
	vendorSaw := make(chan seen, 1)
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		vendorSaw <- seen{r.Clone(context.Background()), string(b)}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Openai-Processing-Ms", "7")
		w.Header().Set("X-Vendor", "v")
		w.Header().Set("Set-Cookie", "vendor=1")
		w.Header().Set("X-Request-Id", "vendor-id")
		_, _ = io.WriteString(w, `{"id":"x"}`)
	}, nil)
	resp := h.do("POST", "/v1/chat/completions?q=1", `{"model":"m"}`,
		"Cookie", "c=1", "X-Forwarded-For", "1.2.3.4", "OpenAI-Organization", "org-x", "OpenAI-Beta", "b", "X-Request-Id", "rid-1")
	if body := readAll(t, resp); resp.StatusCode != 200 || body != `{"id":"x"}` {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	v := <-vendorSaw
	got, gotBody := v.r, v.body
	if got.URL.Path != "/v1/chat/completions" || got.URL.RawQuery != "q=1" || gotBody != `{"model":"m"}` {
		t.Errorf("vendor got %s %s?%s %q", got.Method, got.URL.Path, got.URL.RawQuery, gotBody)
	}
	if a := got.Header.Get("Authorization"); a != "Bearer "+vendorKey {
		t.Errorf("vendor Authorization %q, want the vendor key", a)
	}
	for _, name := range []string{"Cookie", "X-Forwarded-For", "Openai-Organization"} {
		if v := got.Header.Get(name); v != "" {
			t.Errorf("%s forwarded: %q", name, v)
		}
	}
	if got.Header.Get("Openai-Beta") != "b" || got.Header.Get("X-Request-Id") != "rid-1" {
		t.Errorf("headers not forwarded: %v", got.Header)
	}
	if resp.Header.Get("Openai-Processing-Ms") != "7" || resp.Header.Get("X-Vendor") != "" || resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("X-Request-Id") != "rid-1" {
		t.Errorf("answer headers: %v", resp.Header)
	}
	if resp.Header.Get("X-Sluice-Queue-Wait") == "" {
		t.Error("no X-Sluice-Queue-Wait")
	}
	if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "ok" || l["model"] != "m" || l["status"] != 200.0 {
		t.Errorf("access log: %v", l)
	}
}

func TestOtherV1Paths(t *testing.T) {
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path)
	}, nil)
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/v1/models", "GET /v1/models"},
		{"DELETE", "/v1/files/f1", "DELETE /v1/files/f1"},
		{"POST", "/v1/embeddings", "POST /v1/embeddings"},
	} {
		if got := readAll(t, h.do(c.method, c.path, "")); got != c.want {
			t.Errorf("%s %s: vendor saw %q", c.method, c.path, got)
		}
	}
	if h.adm.Acquires() != 3 {
		t.Errorf("%d admissions, want 3: every vendor call goes through the budget", h.adm.Acquires())
	}
}

// TestStatusTable checks each row of the gateway's status table that the
// fake admitter can produce; per-user limit and Redis rows are in
// middleware_test.go and redis_test.go.
func TestStatusTable(t *testing.T) {
	t.Run("queue deadline: 503 fast with Retry-After, not retried", func(t *testing.T) {
		h := newHarness(t, nil, map[string]string{"SLUICE_QUEUE_TIMEOUT": "50ms", "SLUICE_CONCURRENCY": "1"})
		l, err := h.adm.Acquire(context.Background()) // someone else holds the only slot
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release(context.Background())
		start := time.Now()
		resp := h.chat()
		if e := apiErr(t, resp, 503); e.Error.Code != "queue_timeout" {
			t.Errorf("code %q", e.Error.Code)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("took %s", d)
		}
		if resp.Header.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		if w, err := strconv.Atoi(resp.Header.Get("X-Sluice-Queue-Wait")); err != nil || w < 50 {
			t.Errorf("X-Sluice-Queue-Wait %q", resp.Header.Get("X-Sluice-Queue-Wait"))
		}
		if h.adm.Acquires() != 2 || h.hits.Load() != 0 {
			t.Errorf("%d admissions (1 is the test's), %d vendor hits", h.adm.Acquires(), h.hits.Load())
		}
	})
	t.Run("request deadline: 504", func(t *testing.T) {
		h := newHarness(t, hang,
			map[string]string{"SLUICE_REQUEST_TIMEOUT": "200ms", "SLUICE_CALL_TIMEOUT": "5s"})
		if e := apiErr(t, h.chat(), 504); e.Error.Code != "request_timeout" {
			t.Errorf("code %q", e.Error.Code)
		}
		h.adm.waitReleased(t)
		if h.hits.Load() != 1 {
			t.Errorf("%d vendor hits", h.hits.Load())
		}
	})
	t.Run("vendor failed after retries: 502", func(t *testing.T) {
		h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "secret vendor trace", 500)
		}, nil)
		resp := h.chat()
		e := apiErr(t, resp, 502)
		if e.Error.Code != "upstream_failed" || !strings.Contains(e.Error.Message, "3 attempts") || strings.Contains(e.Error.Message, "secret") {
			t.Errorf("%+v", e.Error)
		}
		if h.hits.Load() != 3 {
			t.Errorf("%d vendor hits, want 3", h.hits.Load())
		}
	})
	t.Run("vendor 4xx: passed through, not retried", func(t *testing.T) {
		for _, code := range []int{400, 404, 409, 422} {
			h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				_, _ = io.WriteString(w, `{"error":{"message":"vendor says no","type":"invalid_request_error","code":"x"}}`)
			}, nil)
			resp := h.chat()
			if body := readAll(t, resp); resp.StatusCode != code || !strings.Contains(body, "vendor says no") {
				t.Errorf("%d: got %d %s", code, resp.StatusCode, body)
			}
			if h.hits.Load() != 1 {
				t.Errorf("%d: %d vendor hits, want 1", code, h.hits.Load())
			}
			if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "vendor_4xx" {
				t.Errorf("%d: outcome %v", code, l["outcome"])
			}
		}
	})
	t.Run("store failing: 503 fail closed", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		h.adm.set(func(a *fakeAdmitter) { a.script = []error{errors.New("dial tcp: connection refused")} })
		e := apiErr(t, h.chat(), 503)
		if e.Error.Code != "backend_unavailable" || strings.Contains(e.Error.Message, "refused") {
			t.Errorf("%+v", e.Error)
		}
		if h.hits.Load() != 0 {
			t.Error("the vendor was called without admission")
		}
	})
	t.Run("bad JSON: 400", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		for _, body := range []string{`{"model":`, `[1,2]`, `null`, `"x"`, ``, `{"stream":"yes"}`} {
			e := apiErr(t, h.do("POST", "/v1/chat/completions", body), 400)
			if e.Error.Code != "invalid_json" || strings.Contains(e.Error.Message, "invalid character") {
				t.Errorf("%q: %+v", body, e.Error)
			}
		}
		if h.hits.Load() != 0 || h.adm.Acquires() != 0 {
			t.Error("a bad request reached admission")
		}
	})
	t.Run("too large: 413", func(t *testing.T) {
		h := newHarness(t, nil, map[string]string{"SLUICE_MAX_BODY": "1KiB"})
		big := `{"model":"` + strings.Repeat("x", 2000) + `"}`
		apiErr(t, h.do("POST", "/v1/chat/completions", big), 413)
		// Without Content-Length (chunked), the limit applies while reading.
		req, _ := http.NewRequest("POST", h.gw.URL+"/v1/chat/completions", io.MultiReader(strings.NewReader(big)))
		req.Header.Set("Authorization", "Bearer k1")
		req.ContentLength = -1
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		apiErr(t, resp, 413)
		if h.hits.Load() != 0 {
			t.Error("vendor called")
		}
	})
	t.Run("no key, wrong key: 401", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		for _, auth := range []string{"", "Bearer", "Bearer nope", "Basic k1", "k1"} {
			e := apiErr(t, h.chat("Authorization", auth), 401)
			if strings.Contains(e.Error.Message, "nope") {
				t.Errorf("key echoed: %+v", e.Error)
			}
		}
		if resp := h.chat("Authorization", "Bearer k2"); resp.StatusCode != 200 {
			t.Errorf("second key: %d", resp.StatusCode)
		}
	})
	t.Run("wrong path or method: 404, 405", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		apiErr(t, h.do("GET", "/nope", ""), 404)
		apiErr(t, h.do("GET", "/v1", ""), 404)
		apiErr(t, h.do("GET", "/v1/../admin", ""), 404)
		apiErr(t, h.do("GET", "/v1/%2e%2e/admin", ""), 404)
		for _, c := range []struct{ method, path string }{{"POST", "/healthz"}, {"TRACE", "/v1/models"}, {"CONNECT", "/v1/models"}} {
			if e := apiErr(t, h.do(c.method, c.path, ""), 405); e.Error.Code != "method_not_allowed" {
				t.Errorf("%s %s: %+v", c.method, c.path, e.Error)
			}
		}
		if h.hits.Load() != 0 {
			t.Error("vendor called")
		}
	})
}

func TestVendorBodyTooLarge(t *testing.T) {
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		chunk := strings.Repeat("x", 1<<20)
		for range guarded.DefaultMaxResponseBody>>20 + 1 {
			_, _ = io.WriteString(w, chunk)
		}
	}, map[string]string{"SLUICE_CALL_TIMEOUT": "30s", "SLUICE_REQUEST_TIMEOUT": "60s"})
	apiErr(t, h.chat(), 502)
	if h.hits.Load() != 1 {
		t.Errorf("%d hits", h.hits.Load())
	}
}

func TestNoRedirectFollowed(t *testing.T) {
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
	}, nil)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", h.gw.URL+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer k1")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || h.hits.Load() != 1 {
		t.Errorf("%d, %d hits", resp.StatusCode, h.hits.Load())
	}
}
