package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// FuzzChatRequest: parseChatRequest never panics, accepts exactly the JSON
// objects whose "stream" is absent, null or a boolean and whose counts are
// absent, null or whole numbers, and reads "stream" as encoding/json does.
func FuzzChatRequest(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","stream":true}`,
		`{"stream":false}`, `{"stream":null}`, `{"stream":"yes"}`, `{"stream":1}`,
		`{"model":42}`, `{}`, `[]`, `null`, `"s"`, `{`, ``, `{"a":1}{"b":2}`,
		`{"stream":true,"stream":false}`, `{"STREAM":true}`, "\xff", `{"model":"\ud800"}`,
		`{"max_tokens":10,"n":2}`, `{"max_tokens":1.5}`, `{"n":0}`, `{"max_completion_tokens":null}`,
		`{"messages":[{"content":[{"type":"text","text":"a\"b"}]},{"content":null},7]}`, `{"\u0073tream":true}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := parseChatRequest(body)
		var obj map[string]json.RawMessage
		isObject := json.Unmarshal(body, &obj) == nil && obj != nil
		var stream *bool
		valid := !isObject || obj["stream"] == nil || json.Unmarshal(obj["stream"], &stream) == nil
		for name, least := range map[string]int64{"max_tokens": 0, "max_completion_tokens": 0, "n": 1} {
			if raw, ok := obj[name]; isObject && ok && string(raw) != "null" {
				var n json.Number
				i, ierr := int64(0), json.Unmarshal(raw, &n)
				if ierr == nil {
					i, ierr = n.Int64()
				}
				valid = valid && ierr == nil && i >= least && i < 1<<40
			}
		}
		switch {
		case err == nil && !isObject:
			t.Fatalf("accepted a body that is not a JSON object: %q", body)
		case err == nil && !valid:
			t.Fatalf("accepted a bad stream or count: %q", body)
		case err != nil && isObject && valid:
			t.Fatalf("rejected %q: %v", body, err)
		case err == nil && r.Stream != (stream != nil && *stream):
			t.Fatalf("stream %v for %q", r.Stream, body)
		case err != nil && bytes.Contains([]byte(err.Error()), []byte("invalid character")):
			t.Fatalf("a decoder message reached the client: %v", err)
		case len(r.Model) > maxLoggedModel+3:
			t.Fatalf("model not truncated: %d bytes", len(r.Model))
		case err == nil && (r.N < 1 || r.TextChars < 0 || r.TextChars > int64(len(body))):
			t.Fatalf("%+v for %q", r, body)
		}
	})
}

// FuzzProxy sends any method, path, headers and body through the gateway to
// a vendor that answers 200 and records what it receives. Whatever the
// request: the gateway itself never answers 5xx, no response carries the
// vendor key, and the vendor receives no header outside the allowlist.
func FuzzProxy(f *testing.F) {
	var mu sync.Mutex
	var leaked []string
	h := newHarness(f, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		for name := range r.Header {
			if !upstreamHeaders[name] {
				leaked = append(leaked, name)
			}
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}, nil)
	for _, seed := range []struct{ method, path, header, body string }{
		{"POST", "/v1/chat/completions", "Content-Type: application/json", `{"model":"m","messages":[]}`},
		{"GET", "/v1/models", "", ""},
		{"POST", "/v1/chat/completions", "Content-Type: application/json\nX-Api-Key: k1\nExpect: 100-continue", `{"stream":true}`},
		{"DELETE", "/v1/files/a%2Fb", "Authorization: Bearer nope", ""},
		{"PUT", "/v1/../admin", "X-Forwarded-For: 1.2.3.4", "x"},
		{"POST", "/v1/x", "Content-Encoding: gzip\nContent-Type: application/json", "\x1f\x8b"},
		{"PATCH", "/v1/x?y=%00", "Openai-Organization: o\nCookie: c", `{"max_tokens":"a"}`},
	} {
		f.Add(seed.method, seed.path, seed.header, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, method, path, header string, body []byte) {
		if !strings.HasPrefix(path, "/") {
			return
		}
		req, err := http.NewRequest(method, h.gw.URL+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer k1")
		for line := range strings.SplitSeq(header, "\n") {
			if name, value, ok := strings.Cut(line, ":"); ok {
				req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		if ctx.Err() != nil {
			t.Fatalf("%s %q with %q: no answer in 5s", method, path, header)
		}
		if err != nil {
			return // the client refused to send it
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Errorf("%s %q: the gateway answered %d %s", method, path, resp.StatusCode, b)
		}
		var all bytes.Buffer
		_ = resp.Header.Write(&all)
		all.Write(b)
		if bytes.Contains(all.Bytes(), []byte(vendorKey)) {
			t.Errorf("%s %q: the vendor key is in the answer", method, path)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(leaked) > 0 {
			t.Errorf("%s %q with %q: %v reached the vendor", method, path, header, leaked)
			leaked = nil
		}
	})
}
