package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"
)

// serve runs the gateway of h with Serve (the listener, connection and
// timeout settings of sluice serve) on a loopback port, and returns its
// address.
func (h *harness) serve() string {
	h.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.srv.Serve(ctx, ln)
	}()
	h.t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// rawRequest writes a raw HTTP/1.1 request on a new connection to addr and
// returns the connection, unread.
func rawRequest(t *testing.T, addr, req string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if req != "" {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// readRawResponse reads one response from c within 20s.
func readRawResponse(t *testing.T, c net.Conn) (*http.Response, string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// heapInUse returns the heap held by objects after a collection
// (runtime/metrics).
func heapInUse() uint64 {
	runtime.GC()
	sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(sample)
	return sample[0].Value.Uint64()
}

// TestBodyFloodBoundedMemory: many large bodies that wait in the queue
// together hold no more than the gateway's caps on buffered bytes; those
// beyond the caps are answered at once (429 for one client), not buffered.
func TestBodyFloodBoundedMemory(t *testing.T) {
	h := newHarness(t, nil, map[string]string{
		"SLUICE_CONCURRENCY": "1", "SLUICE_QUEUE_TIMEOUT": "30s", "SLUICE_REQUEST_TIMEOUT": "60s",
	})
	h.adm.slots <- struct{}{} // the only slot is taken: every admission waits
	t.Cleanup(func() { <-h.adm.slots })
	const n, size = 60, 4 << 20
	body := append([]byte(`{"model":"m","messages":[{"role":"user","content":"`), bytes.Repeat([]byte("x"), size-100)...)
	body = append(body, `"}]}`...)
	base := heapInUse()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	answered := make(chan int, n)
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", h.gw.URL+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer k1")
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return // cancelled below
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answered <- resp.StatusCode
		})
	}
	// Every request is either answered or waiting for admission.
	var codes []int
	deadline := time.After(60 * time.Second)
	for len(codes)+h.adm.Acquires() < n {
		select {
		case c := <-answered:
			codes = append(codes, c)
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%d answered, %d waiting, of %d", len(codes), h.adm.Acquires(), n)
		}
	}
	grown := int64(heapInUse()) - int64(base)
	cancel()
	wg.Wait()
	t.Logf("%d requests of %d MiB: %d waiting in the queue, answers %v; heap grew %d MiB",
		n, size>>20, h.adm.Acquires(), codes, grown>>20)
	if limit := int64(128 << 20); grown > limit {
		t.Errorf("the heap grew by %d MiB with %d bodies of %d MiB in the queue, want under %d MiB",
			grown>>20, h.adm.Acquires(), size>>20, limit>>20)
	}
	for _, c := range codes {
		if c != http.StatusTooManyRequests && c != http.StatusServiceUnavailable {
			t.Errorf("an over-cap request got %d, want 429 or 503", c)
		}
	}
}

// TestManyKeysBoundedWork: a body of a huge flat object is checked without
// building a map of it: what the check allocates stays a fraction of the
// body, not many times it.
func TestManyKeysBoundedWork(t *testing.T) {
	var b bytes.Buffer
	b.WriteString(`{"model":"m",`)
	for i := 0; b.Len() < 4<<20; i++ {
		fmt.Fprintf(&b, `"k%d":0,`, i)
	}
	b.WriteString(`"stream":true}`)
	body := b.Bytes()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r, err := parseChatRequest(body)
	runtime.ReadMemStats(&after)
	if err != nil || !r.Stream || r.Model != "m" {
		t.Fatalf("%+v, %v", r, err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("checking a %d KiB body of %d keys allocated %d KiB", len(body)>>10, bytes.Count(body, []byte(":")), alloc>>10)
	if alloc > uint64(len(body)) {
		t.Errorf("checking a %d KiB body allocated %d KiB", len(body)>>10, alloc>>10)
	}
}

// TestStalledStreamReaderReleasesSlot: a client that stops reading a stream
// holds the vendor slot until the call deadline at the latest, not the
// request deadline. The client is a raw socket that never reads.
func TestStalledStreamReaderReleasesSlot(t *testing.T) {
	vendorDone := make(chan struct{})
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		defer close(vendorDone)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		chunk := "data: " + strings.Repeat("x", 64<<10) + "\n\n"
		for r.Context().Err() == nil {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}, map[string]string{"SLUICE_CALL_TIMEOUT": "1s", "SLUICE_REQUEST_TIMEOUT": "120s", "SLUICE_CANCEL_GRACE": "0"})
	addr := h.serve()
	c := rawRequest(t, addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"+
		"Content-Type: application/json\r\nContent-Length: "+fmt.Sprint(len(streamBody))+"\r\n\r\n"+streamBody)
	_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
	start := time.Now()
	select {
	case <-vendorDone:
	case <-time.After(60 * time.Second):
		t.Fatal("the vendor call is still open 60s after the request, with a 1s call deadline")
	}
	h.adm.waitReleased(t)
	t.Logf("slot released %s after the request (call deadline 1s, request deadline 120s)", time.Since(start).Round(time.Millisecond))
}

// TestIdleConnectionsCapped: connections beyond SLUICE_MAX_CONNS that send
// nothing do not pile up: the gateway closes idle ones to make room, and a
// real request still gets its answer.
func TestIdleConnectionsCapped(t *testing.T) {
	h := newHarness(t, nil, map[string]string{"SLUICE_MAX_CONNS": "20"})
	addr := h.serve()
	const n = 60
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = rawRequest(t, addr, "")
	}
	// A real request, while the idle ones hold more than the cap.
	c := rawRequest(t, addr, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\r\n")
	if resp, body := readRawResponse(t, c); resp.StatusCode != http.StatusOK {
		t.Errorf("a real request among %d idle connections: %d %s", n, resp.StatusCode, body)
	}
	// At most the cap remain open at the gateway: the others see their
	// connection closed (perhaps after a 503).
	closed := 0
	deadline := time.Now().Add(3 * time.Second) // well before ReadHeaderTimeout
	for _, ic := range conns {
		_ = ic.SetReadDeadline(deadline)
		if _, err := io.ReadAll(ic); !errors.Is(err, os.ErrDeadlineExceeded) {
			closed++
		}
	}
	if closed < n-20 {
		t.Errorf("%d of %d idle connections closed by the gateway, want at least %d", closed, n, n-20)
	}
}

// TestConnectionLimits: a header block of 100 KiB is refused (431), and an
// idle keep-alive connection is closed after SLUICE_IDLE_TIMEOUT.
func TestConnectionLimits(t *testing.T) {
	h := newHarness(t, nil, map[string]string{"SLUICE_IDLE_TIMEOUT": "1s"})
	addr := h.serve()
	c := rawRequest(t, addr, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nX-Big: "+
		strings.Repeat("a", 100<<10)+"\r\n\r\n")
	if resp, _ := readRawResponse(t, c); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB of headers: %d, want 431", resp.StatusCode)
	}
	c = rawRequest(t, addr, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\r\n")
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle keep-alive connection: %v, want it closed by the gateway (EOF)", err)
	}
}

// TestVendorAuthFailure: the vendor refusing the vendor key is the
// gateway's failure, not the client's: 502 upstream_auth_failed, the
// vendor's message (which quotes part of the key) in the log only.
func TestVendorAuthFailure(t *testing.T) {
	for _, code := range []int{401, 403, 407} {
		h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Www-Authenticate", `Bearer realm="vendor"`)
			w.WriteHeader(code)
			_, _ = io.WriteString(w, `{"error":{"message":"Incorrect API key provided: vend*********-key","code":"invalid_api_key"}}`)
		}, nil)
		resp := h.chat()
		if resp.Header.Get("Www-Authenticate") != "" {
			t.Errorf("%d: the vendor's WWW-Authenticate reached the client", code)
		}
		e := apiErr(t, resp, http.StatusBadGateway)
		if e.Error.Code != "upstream_auth_failed" || strings.Contains(e.Error.Message, "Incorrect") {
			t.Errorf("%d: %+v", code, e.Error)
		}
		if h.hits.Load() != 1 {
			t.Errorf("%d: %d vendor hits, want 1 (not retried)", code, h.hits.Load())
		}
		if l := h.lastAccess("/v1/chat/completions"); !strings.Contains(fmt.Sprint(l["detail"]), "Incorrect API key") {
			t.Errorf("%d: the vendor's answer is not in the log: %v", code, l)
		}
	}
}

// TestLoadCaps: past the requests in progress of one client, 429; past those
// of the replica, 503. Nothing past a cap reaches admission.
func TestLoadCaps(t *testing.T) {
	h := newHarness(t, nil, map[string]string{
		"SLUICE_CONCURRENCY": "1", "SLUICE_QUEUE_TIMEOUT": "30s", "SLUICE_REQUEST_TIMEOUT": "60s",
		"SLUICE_CLIENT_MAX_REQUESTS": "1", "SLUICE_MAX_REQUESTS": "2",
		"SLUICE_API_KEYS": "k1,k2,k3",
	})
	h.adm.slots <- struct{}{} // every admission waits
	t.Cleanup(func() { <-h.adm.slots })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	park := func(key string) {
		wg.Go(func() {
			resp, err := func() (*http.Response, error) {
				req, _ := http.NewRequestWithContext(ctx, "POST", h.gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
				req.Header.Set("Authorization", "Bearer "+key)
				return http.DefaultClient.Do(req)
			}()
			if err == nil {
				resp.Body.Close()
			}
		})
		<-h.adm.entered // it waits for admission
	}
	park("k1")
	if e := apiErr(t, h.chat(), 429); e.Error.Code != "too_many_requests_in_progress" {
		t.Errorf("%+v", e.Error)
	}
	park("k2")
	if e := apiErr(t, h.chat("Authorization", "Bearer k3"), 503); e.Error.Code != "overloaded" {
		t.Errorf("%+v", e.Error)
	}
	if h.adm.Acquires() != 2 {
		t.Errorf("%d admissions, want the 2 parked requests", h.adm.Acquires())
	}
}

// A request answered with an error before its body was read (here a 401:
// no key) ends its connection at once. Otherwise net/http drains the body
// after the answer, for as long as the read timeout, from a client that
// sends it a byte at a time, and SLUICE_MAX_CONNS of them, no key needed,
// hold every connection the listener allows.
func TestErrorBeforeBodyClosesTheConnection(t *testing.T) {
	h := newHarness(t, nil, map[string]string{"SLUICE_MAX_CONNS": "4", "SLUICE_REQUEST_TIMEOUT": "60s"})
	addr := h.serve()
	for i := range 4 {
		c := rawRequest(t, addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
		resp, _ := readRawResponse(t, c)
		if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
			t.Fatalf("client %d: %d, Connection: close %v; want a 401 that closes", i, resp.StatusCode, resp.Close)
		}
		// The server closes its end: the next read ends (EOF), long before
		// the 60s read timeout.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("client %d: after the 401 the connection stays open (read %d, %v)", i, n, err)
		}
	}
	// The listener's connections are free for a real client.
	resp, body := readRawResponse(t, rawRequest(t, addr, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\r\n"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a real request after them: %d %s", resp.StatusCode, body)
	}
}

// TestStalledReaderOfABufferedAnswerEndsByTheRequestDeadline: a client that
// stops reading a large non-streaming answer (held in the gateway's memory)
// holds it, and its connection, until the request deadline at the latest,
// not for a write timeout per chunk.
func TestStalledReaderOfABufferedAnswerEndsByTheRequestDeadline(t *testing.T) {
	answer := strings.Repeat("x", 16<<20)
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, answer)
	}, map[string]string{"SLUICE_WRITE_TIMEOUT": "60s", "SLUICE_REQUEST_TIMEOUT": "2s"})
	addr := h.serve()
	c := rawRequest(t, addr, "GET /v1/files/f/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\r\n")
	_ = c.(*net.TCPConn).SetReadBuffer(4 << 10) // and never read
	start := time.Now()
	ended := func() bool {
		for _, e := range h.accessLog() {
			if e["path"] == "/v1/files/f/content" {
				return true
			}
		}
		return false
	}
	for !ended() {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the answer to a client that stopped reading is still being written 20s later, with a 2s request deadline")
		}
		time.Sleep(50 * time.Millisecond) // the access log has no signal to wait on
	}
	t.Logf("request ended %s after it began (request deadline 2s, write timeout 60s)", time.Since(start).Round(time.Millisecond))
}
