package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

const streamBody = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`

func sseChunk(i int) string {
	return fmt.Sprintf("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w%d\"}}]}\n\n", i)
}

// sseVendor streams n chunks, waiting before each chunk after the first for
// a value on next (nil: no waiting), then "data: [DONE]" unless cut.
func sseVendor(n int, next <-chan struct{}, cut bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		for i := range n {
			if i > 0 && next != nil {
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
			_, _ = io.WriteString(w, sseChunk(i))
			w.(http.Flusher).Flush()
		}
		if !cut {
			_, _ = io.WriteString(w, "data: [DONE]\n\n")
		}
	}
}

// readEvent reads one SSE event (up to its blank line).
func readEvent(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var ev strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v (so far %q)", err, ev.String())
		}
		if line == "\n" {
			return ev.String()
		}
		ev.WriteString(line)
	}
}

// TestStreamChunkByChunk: each chunk reaches the client before the vendor
// sends the next (so the gateway flushes per chunk), with the lease held
// throughout, and released when the stream ends.
func TestStreamChunkByChunk(t *testing.T) {
	next := make(chan struct{})
	h := newHarness(t, sseVendor(3, next, false), nil)
	resp := h.do("POST", "/v1/chat/completions", streamBody)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		if ev := readEvent(t, br); ev != strings.TrimSuffix(sseChunk(i), "\n") {
			t.Fatalf("event %d: %q", i, ev)
		}
		if i == 2 {
			break // the vendor ends the stream by itself now
		}
		if h.adm.Held() != 1 {
			t.Fatalf("lease not held while streaming (held %d)", h.adm.Held())
		}
		next <- struct{}{} // only now may the vendor send the next chunk
	}
	if ev := readEvent(t, br); ev != "data: [DONE]\n" {
		t.Fatalf("last event %q", ev)
	}
	h.adm.waitReleased(t)
	if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "ok" || l["stream"] != true {
		t.Errorf("access log %v", l)
	}
}

// TestStreamClientGone: a client that disconnects mid-stream cancels the
// vendor call and frees the slot.
func TestStreamClientGone(t *testing.T) {
	vendorDone := make(chan struct{})
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		defer close(vendorDone)
		sseVendor(2, make(chan struct{}), false)(w, r) // never gets past the first chunk by itself
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	resp := h.doCtx(ctx, "POST", "/v1/chat/completions", streamBody)
	readEvent(t, bufio.NewReader(resp.Body))
	cancel()
	resp.Body.Close()
	<-vendorDone // the vendor saw its request cancelled
	h.adm.waitReleased(t)
	if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "client_closed_request" {
		t.Errorf("access log %v", l)
	}
	if h.hits.Load() != 1 {
		t.Errorf("%d vendor hits", h.hits.Load())
	}
}

// TestStreamSlowReader: a client that stops reading a stream cannot hold the
// lease past the request deadline, even with the gateway blocked writing.
func TestStreamSlowReader(t *testing.T) {
	h := newHarness(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		chunk := "data: " + strings.Repeat("x", 64<<10) + "\n\n"
		for r.Context().Err() == nil {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}, map[string]string{"SLUICE_REQUEST_TIMEOUT": "500ms"})
	resp := h.do("POST", "/v1/chat/completions", streamBody) // and never read
	defer resp.Body.Close()
	h.adm.waitReleased(t)
	if l := h.lastAccess("/v1/chat/completions"); l["outcome"] == "ok" {
		t.Errorf("access log %v", l)
	}
}

// TestStreamCut: a stream the vendor ends without [DONE], or breaks, is
// passed on as it is (the status is already sent) and recorded as
// stream_cut, not as a success; it is not retried.
func TestStreamCut(t *testing.T) {
	for name, vendor := range map[string]http.HandlerFunc{
		"no [DONE]": sseVendor(2, nil, true),
		"broken": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Content-Length", "100000") // promise more than is sent
			_, _ = io.WriteString(w, sseChunk(0))
			w.(http.Flusher).Flush()
			hangUp(w, r)
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, vendor, nil)
			resp := h.do("POST", "/v1/chat/completions", streamBody)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(string(body), sseChunk(0)) {
				t.Errorf("%d %q", resp.StatusCode, body)
			}
			h.adm.waitReleased(t)
			if l := h.lastAccess("/v1/chat/completions"); l["outcome"] != "stream_cut" || l["level"] != "WARN" {
				t.Errorf("access log %v", l)
			}
			if h.hits.Load() != 1 {
				t.Errorf("%d vendor hits", h.hits.Load())
			}
			if got := metricValue(t, h, `sluice_requests_total{outcome="stream_cut"}`); got != "1" {
				t.Errorf("stream_cut counted %q", got)
			}
		})
	}
}

func TestDoneScanner(t *testing.T) {
	for _, c := range []struct {
		chunks []string
		want   bool
	}{
		{[]string{"data: x\n\ndata: [DONE]\n\n"}, true},
		{[]string{"data: x\n\ndata: [DO", "NE]\n\n"}, true},
		{[]string{"data: [DONE]\r\n\r\n"}, true},
		{[]string{"data: x\n\ndata: [DONE]"}, true}, // last line without newline
		{[]string{"data: x\n\n"}, false},
		{[]string{"data: [DONE] and more\n"}, false},
		{[]string{"xdata: [DONE]\n"}, false},
		{[]string{""}, false},
	} {
		var d doneScanner
		for _, p := range c.chunks {
			d.scan([]byte(p))
		}
		if d.complete() != c.want {
			t.Errorf("%q: %v", c.chunks, !c.want)
		}
	}
}
