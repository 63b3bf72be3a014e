package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// upstreamHeaders are the only request headers the vendor may receive: the
// forwarded allowlist and what the gateway and its transport set.
var upstreamHeaders = map[string]bool{
	"Accept": true, "Content-Type": true, "Idempotency-Key": true, "Openai-Beta": true, "User-Agent": true,
	"Authorization": true, "X-Request-Id": true, "Content-Length": true, "Accept-Encoding": true,
}

// TestResponseHeaderAllowlist: of the vendor's headers only the allowlist
// reaches the client, and the gateway's own headers win.
func TestResponseHeaderAllowlist(t *testing.T) {
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		for k, v := range map[string]string{
			"Openai-Organization": "org-secret", "Openai-Project": "proj-secret",
			"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true",
			"Www-Authenticate": "Bearer", "Ratelimit-Remaining": "999", "X-Ratelimit-Remaining-Requests": "999",
			"Set-Cookie": "a=b", "Content-Type": "application/json", "Openai-Model": "m-2024",
		} {
			w.Header().Set(k, v)
		}
		_, _ = io.WriteString(w, `{}`)
	}, map[string]string{"SLUICE_USER_RATE": "100/m"})
	resp := h.chat()
	readAll(t, resp)
	for name := range resp.Header {
		switch name {
		case "Content-Type", "Content-Length", "Date", "Openai-Model", "X-Request-Id", "X-Sluice-Queue-Wait",
			"Ratelimit-Limit", "Ratelimit-Remaining", "Ratelimit-Reset", "Ratelimit-Policy":
		default:
			t.Errorf("vendor header %s: %q reached the client", name, resp.Header.Values(name))
		}
	}
	if got := resp.Header.Get("Ratelimit-Remaining"); got == "999" || got == "" {
		t.Errorf("RateLimit-Remaining %q: want the gateway's own", got)
	}
}

// rawVendor answers every request with the raw bytes of answer.
func rawVendor(answer string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		c, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer c.Close()
		_, _ = bw.WriteString(answer)
		_ = bw.Flush()
	}
}

// TestVendorInvalidStatus: a vendor 101 or a status of 600 or more is not
// an answer to pass on: 502, not retried.
func TestVendorInvalidStatus(t *testing.T) {
	for _, answer := range []string{
		"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\n{}",
		"HTTP/1.1 999 Weirder\r\nContent-Length: 2\r\n\r\n{}",
	} {
		h := newHarness(t, rawVendor(answer), nil)
		if e := apiErr(t, h.chat(), http.StatusBadGateway); e.Error.Code != "upstream_failed" {
			t.Errorf("%q: %+v", answer[:12], e.Error)
		}
		if h.hits.Load() != 1 {
			t.Errorf("%q: %d vendor hits", answer[:12], h.hits.Load())
		}
	}
}

// TestRequestHeaderAllowlist: only the allowlisted client headers reach the
// vendor; a compressed body is refused (415), not forwarded unchecked.
func TestRequestHeaderAllowlist(t *testing.T) {
	got := make(chan http.Header, 1)
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		_, _ = io.WriteString(w, `{}`)
	}, nil)
	resp := h.chat("Expect", "100-continue", "X-Original-URL", "/admin", "X-HTTP-Method-Override", "DELETE",
		"api-key", "k1", "X-Api-Key", "k1", "X-Forwarded-Host", "evil", "Forwarded", "for=1.2.3.4",
		"Openai-Organization", "org-x", "Openai-Project", "p", "Cookie", "c=1", "Idempotency-Key", "idem-1")
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("%d", resp.StatusCode)
	}
	hdr := <-got
	for name := range hdr {
		if !upstreamHeaders[name] {
			t.Errorf("%s: %q reached the vendor", name, hdr.Values(name))
		}
	}
	if hdr.Get("Idempotency-Key") != "idem-1" {
		t.Error("Idempotency-Key not forwarded")
	}
	// SLUICE_FORWARD_HEADERS adds to the allowlist, never credentials.
	h2 := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		_, _ = io.WriteString(w, `{}`)
	}, map[string]string{"SLUICE_FORWARD_HEADERS": "x-mock-latency, Anthropic-Version"})
	readAll(t, h2.chat("X-Mock-Latency", "1ms", "Anthropic-Version", "v", "X-Api-Key", "k1"))
	if hdr := <-got; hdr.Get("X-Mock-Latency") != "1ms" || hdr.Get("Anthropic-Version") != "v" || hdr.Get("X-Api-Key") != "" {
		t.Errorf("with SLUICE_FORWARD_HEADERS the vendor got %v", hdr)
	}
	for _, bad := range []string{"Authorization", "cookie", "Host", "bad name"} {
		if _, err := LoadConfig(func(n string) (string, bool) {
			return map[string]string{"SLUICE_UPSTREAM_URL": "http://v", "SLUICE_FORWARD_HEADERS": bad}[n], true
		}); err == nil {
			t.Errorf("SLUICE_FORWARD_HEADERS=%s accepted", bad)
		}
	}
	e := apiErr(t, h.do("POST", "/v1/audio/transcriptions", "\x1f\x8b...", "Content-Encoding", "gzip", "Content-Type", "multipart/form-data"), 415)
	if e.Error.Code != "unsupported_content_encoding" || h.hits.Load() != 1 {
		t.Errorf("%+v, %d vendor hits", e.Error, h.hits.Load())
	}
}

// TestClientAddr: X-Forwarded-For counts only behind a trusted proxy; the
// client is the rightmost untrusted hop; IPv6 clients count per /64.
func TestClientAddr(t *testing.T) {
	s := &gateway{cfg: testConfig(t, map[string]string{"SLUICE_TRUSTED_PROXIES": "10.0.0.0/8,2001:db8:ffff::/48"})}
	for _, c := range []struct{ peer, xff, want string }{
		{"192.0.2.1:5", "", "192.0.2.1"},
		{"192.0.2.1:5", "198.51.100.7", "192.0.2.1"},                      // untrusted peer: its XFF is ignored
		{"10.0.0.2:5", "", "10.0.0.2"},                                    // a trusted peer sending none
		{"10.0.0.2:5", "198.51.100.7", "198.51.100.7"},                    // one proxy
		{"10.0.0.2:5", "6.6.6.6, 198.51.100.7, 10.0.0.3", "198.51.100.7"}, // the client's own claim (6.6.6.6) ignored
		{"10.0.0.2:5", "10.0.0.9, 10.0.0.3", "10.0.0.9"},                  // all trusted: the leftmost
		{"10.0.0.2:5", "garbage", "10.0.0.2"},
		{"[2001:db8:ffff::1]:5", "[2001:db8:1:2::99]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:aaaa::1]:5", "", "2001:db8:1:2::/64"},
		{"[::ffff:10.0.0.2]:5", "198.51.100.7", "198.51.100.7"},
	} {
		r := &http.Request{RemoteAddr: c.peer, Header: http.Header{}}
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := clientNet(s.clientAddr(r)); got != c.want {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, want %s", c.peer, c.xff, got, c.want)
		}
	}
	if _, err := LoadConfig(func(n string) (string, bool) {
		return map[string]string{"SLUICE_UPSTREAM_URL": "http://v", "SLUICE_TRUSTED_PROXIES": "10.0.0.0/33"}[n], true
	}); err == nil {
		t.Error("a bad CIDR was accepted")
	}
}

// TestLoggedStringsBounded: a huge path does not make a huge log line, and
// the logged model is cut on a character boundary.
func TestLoggedStringsBounded(t *testing.T) {
	h := newHarness(t, nil, nil)
	long := "/v1/" + strings.Repeat("a", 20000)
	readAll(t, h.do("GET", long, ""))
	l := h.lastAccess(truncate(long, maxLoggedPath))
	if p := l["path"].(string); len(p) > maxLoggedPath+3 {
		t.Errorf("logged path of %d bytes", len(p))
	}
	model := "a" + strings.Repeat("é", 80)
	readAll(t, h.do("POST", "/v1/chat/completions", `{"model":"`+model+`"}`))
	m := h.lastAccess("/v1/chat/completions")["model"].(string)
	if !utf8.ValidString(m) || !strings.HasPrefix(model, strings.TrimSuffix(m, "...")) || len(m) > maxLoggedModel+3 {
		t.Errorf("logged model %q", m)
	}
}

// TestReadinessCached: a flood of /readyz costs the store a check or two,
// not one per probe.
func TestReadinessCached(t *testing.T) {
	h := newHarness(t, nil, nil)
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			if resp, err := http.Get(h.gw.URL + "/readyz"); err == nil {
				readAll(t, resp)
			}
		})
	}
	wg.Wait()
	var checks int
	h.adm.set(func(a *fakeAdmitter) { checks = a.checks })
	if checks > 5 {
		t.Errorf("200 probes ran %d checks of the store", checks)
	}
}

// TestOpsListener: with SLUICE_OPS_LISTEN, /metrics and /readyz are served
// there and not on the public listener; /healthz on both.
func TestOpsListener(t *testing.T) {
	vendor := httptestServer(t)
	cfg := testConfig(t, map[string]string{"SLUICE_LISTEN": "127.0.0.1:0", "SLUICE_OPS_LISTEN": "127.0.0.1:0", "SLUICE_UPSTREAM_URL": vendor})
	logs := newSyncBuffer()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	addr := listenAddr(t, logs, done)
	ops := regexp.MustCompile(`"msg":"operations listener[^\n]*"addr":"([^"]+)"`).FindStringSubmatch(logs.String())
	if ops == nil {
		t.Fatalf("no operations listener in the log:\n%s", logs.String())
	}
	for _, path := range []string{"/metrics", "/readyz", "/healthz", "/status", "/status.json"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		if path == "/healthz" {
			readAll(t, resp)
		} else {
			apiErr(t, resp, 404)
		}
		resp, err = http.Get("http://" + ops[1] + path)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 200 {
			t.Errorf("%s on the operations listener: %d", path, resp.StatusCode)
		}
		// The cluster's view: the budget on the status page and its data,
		// the cluster-wide gauges beside the replica's own metrics.
		for p, want := range map[string]string{"/status": cfg.Budget, "/status.json": `"name":"` + cfg.Budget + `"`, "/metrics": "sluice_cluster_capacity"} {
			if path == p && !strings.Contains(body, want) {
				t.Errorf("%s on the operations listener lacks %q", path, want)
			}
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func httptestServer(t *testing.T) string {
	h := newHarness(t, nil, nil)
	return h.vendor.URL
}

// TestClientIDIsKeyed: the logged client id is an HMAC under the
// deployment's secret, not a plain hash anyone can test a guess against.
func TestClientIDIsKeyed(t *testing.T) {
	plain := sha256.Sum256([]byte("k1"))
	ids := map[string]string{}
	for _, secret := range []string{"s1", "s2"} {
		h := newHarness(t, nil, map[string]string{"SLUICE_CLIENT_ID_SECRET": secret})
		readAll(t, h.chat())
		ids[secret], _ = h.lastAccess("/v1/chat/completions")["user"].(string)
	}
	if ids["s1"] == ids["s2"] || !strings.HasPrefix(ids["s1"], "key-") ||
		strings.Contains(ids["s1"], hex.EncodeToString(plain[:])[:16]) {
		t.Errorf("client ids %v", ids)
	}
	// Without a secret of its own, the deployment's vendor key keys it.
	a, b := idSecret(testConfig(t, nil)), idSecret(testConfig(t, map[string]string{"SLUICE_UPSTREAM_API_KEY": "other"}))
	if string(a) == string(b) {
		t.Error("the derived secret does not depend on the vendor key")
	}
}

// TestNoAuthLoopbackOnly: without client keys the gateway listens on
// loopback only, unless SLUICE_ALLOW_NO_AUTH says otherwise.
func TestNoAuthLoopbackOnly(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"SLUICE_API_KEYS": "", "SLUICE_LISTEN": ":8080"}, "127.0.0.1:8080"},
		{map[string]string{"SLUICE_API_KEYS": "", "SLUICE_LISTEN": "0.0.0.0:9"}, "127.0.0.1:9"},
		{map[string]string{"SLUICE_API_KEYS": "", "SLUICE_LISTEN": "[::1]:9"}, "[::1]:9"},
		{map[string]string{"SLUICE_API_KEYS": "", "SLUICE_LISTEN": ":8080", "SLUICE_ALLOW_NO_AUTH": "true"}, ":8080"},
		{map[string]string{"SLUICE_LISTEN": ":8080"}, ":8080"},
	} {
		cfg := testConfig(t, c.env) // SLUICE_API_KEYS="" is unset: no keys
		if got := bindAddr(cfg); got != c.want {
			t.Errorf("%v: listens on %s, want %s", c.env, got, c.want)
		}
	}
}

// TestCosmetics: the small things a client or operator sees.
func TestCosmetics(t *testing.T) {
	t.Run("GET /v1/chat/completions is forwarded", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		if resp := h.do("GET", "/v1/chat/completions?limit=2", ""); readAll(t, resp) != `{"ok":true}` || resp.StatusCode != 200 {
			t.Errorf("%d", resp.StatusCode)
		}
	})
	t.Run("401 carries WWW-Authenticate", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		resp := h.chat("Authorization", "Bearer nope")
		if resp.Header.Get("Www-Authenticate") == "" {
			t.Error("no WWW-Authenticate")
		}
		apiErr(t, resp, 401)
	})
	t.Run("%2F is forwarded as sent", func(t *testing.T) {
		got := make(chan string, 1)
		h := newHarness(t, func(w http.ResponseWriter, r *http.Request) { got <- r.RequestURI }, nil)
		readAll(t, h.do("GET", "/v1/files/a%2Fb/content?x=%2F", ""))
		if u := <-got; u != "/v1/files/a%2Fb/content?x=%2F" {
			t.Errorf("the vendor got %s", u)
		}
		apiErr(t, h.do("GET", "/v1/files/%2e%2e/x", ""), 404)
	})
	t.Run("no 499 on the wire to a client that half-closed", func(t *testing.T) {
		arrived := make(chan struct{}, 1)
		h := newHarness(t, func(w http.ResponseWriter, r *http.Request) { arrived <- struct{}{}; hang(w, r) }, nil)
		addr := h.serve()
		c := rawRequest(t, addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"+
			"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}")
		<-arrived
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if b, err := io.ReadAll(c); len(b) > 0 || err != nil {
			t.Errorf("the client got %q (%v), want the connection closed without an answer", b, err)
		}
		if l := h.lastAccess("/v1/chat/completions"); l["status"] != 499.0 {
			t.Errorf("access log %v", l)
		}
	})
	t.Run("408 for a body still arriving at the read timeout", func(t *testing.T) {
		h := newHarness(t, nil, map[string]string{"SLUICE_REQUEST_TIMEOUT": "1s", "SLUICE_CALL_TIMEOUT": "500ms"})
		addr := h.serve()
		c := rawRequest(t, addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"+
			"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":")
		resp, body := readRawResponse(t, c)
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("%d %s", resp.StatusCode, body)
		}
	})
	t.Run("net/http's own errors in the OpenAI shape", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		addr := h.serve()
		for _, c := range []struct {
			req  string
			code int
		}{
			{"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", 431},
			{"GARBAGE\r\n\r\n", 400},
			{"GET /v1/models HTTP/1.1\r\n\r\n", 400}, // no Host
			{"POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
		} {
			conn := rawRequest(t, addr, c.req)
			resp, body := readRawResponse(t, conn)
			var e errorBody
			if resp.StatusCode != c.code || json.Unmarshal([]byte(body), &e) != nil || e.Error.Code == "" ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%q: %d %q %s", c.req[:min(20, len(c.req))], resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
		}
	})
}
