package server

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzChatRequest: parseChatRequest never panics, accepts exactly the JSON
// objects whose "stream" is absent, null or a boolean, and reads "stream" as
// encoding/json does.
func FuzzChatRequest(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","stream":true}`,
		`{"stream":false}`, `{"stream":null}`, `{"stream":"yes"}`, `{"stream":1}`,
		`{"model":42}`, `{}`, `[]`, `null`, `"s"`, `{`, ``, `{"a":1}{"b":2}`,
		`{"stream":true,"stream":false}`, `{"STREAM":true}`, "\xff", `{"model":"\ud800"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := parseChatRequest(body)
		var obj map[string]json.RawMessage
		isObject := json.Unmarshal(body, &obj) == nil && obj != nil
		var stream *bool
		streamOK := !isObject || obj["stream"] == nil || json.Unmarshal(obj["stream"], &stream) == nil
		switch {
		case err == nil && !isObject:
			t.Fatalf("accepted a body that is not a JSON object: %q", body)
		case err == nil && !streamOK:
			t.Fatalf("accepted a non-boolean stream: %q", body)
		case err != nil && isObject && streamOK:
			t.Fatalf("rejected %q: %v", body, err)
		case err == nil && r.Stream != (stream != nil && *stream):
			t.Fatalf("stream %v for %q", r.Stream, body)
		case err != nil && bytes.Contains([]byte(err.Error()), []byte("invalid character")):
			t.Fatalf("a decoder message reached the client: %v", err)
		case len(r.Model) > 100:
			t.Fatalf("model not truncated: %d bytes", len(r.Model))
		}
	})
}
