package mockvendor

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// chatRequest is the part of a chat completion request the vendor reads.
type chatRequest struct {
	Model         string        `json:"model"`
	Messages      []chatMessage `json:"messages"`
	Stream        bool          `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int64 `json:"max_tokens"`
	MaxCompletionTokens *int64 `json:"max_completion_tokens"`
	N                   *int64 `json:"n"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

func (r *chatRequest) model() string {
	if r.Model == "" {
		return DefaultModel
	}
	return r.Model
}

// promptTokens is a rough token count of the messages: words of string
// contents, a quarter of the bytes of anything else.
func (r *chatRequest) promptTokens() int {
	n := 0
	for _, m := range r.Messages {
		var s string
		if json.Unmarshal(m.Content, &s) == nil {
			n += len(strings.Fields(s))
		} else {
			n += len(m.Content) / 4
		}
	}
	return n
}

// Bounds of the token estimate's factors: a hostile max_tokens or n cannot
// overflow it (OpenAI allows n up to 128).
const (
	maxAllowance = 1 << 32
	maxN         = 128
)

// allowance is the output allowance of r: max_tokens, else
// max_completion_tokens, else def, times n (default 1).
func (r *chatRequest) allowance(def int) int64 {
	per := int64(def)
	switch {
	case r.MaxTokens != nil:
		per = *r.MaxTokens
	case r.MaxCompletionTokens != nil:
		per = *r.MaxCompletionTokens
	}
	n := int64(1)
	if r.N != nil {
		n = *r.N
	}
	return min(max(per, 0), maxAllowance) * min(max(n, 1), maxN)
}

// estimate is the token cost of r as OpenAI counts it at arrival:
// ceil(characters of all message contents / 4) plus the allowance.
// Characters are Unicode code points of string contents and of the text of
// "text" content parts; other parts (images, audio) count nothing.
func (r *chatRequest) estimate(def int) int64 {
	chars := 0
	for _, m := range r.Messages {
		var s string
		if json.Unmarshal(m.Content, &s) == nil {
			chars += utf8.RuneCountInString(s)
			continue
		}
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if json.Unmarshal(m.Content, &parts) == nil {
			for _, p := range parts {
				if p.Type == "text" {
					chars += utf8.RuneCountInString(p.Text)
				}
			}
		}
	}
	return int64((chars+3)/4) + r.allowance(def)
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type message struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Refusal *string `json:"refusal"`
}

type choice struct {
	Index        int       `json:"index"`
	Message      message   `json:"message"`
	FinishReason string    `json:"finish_reason"`
	Logprobs     *struct{} `json:"logprobs"`
}

type chatCompletion struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []choice `json:"choices"`
	Usage   usage    `json:"usage"`
}

type delta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chunkChoice struct {
	Index        int       `json:"index"`
	Delta        delta     `json:"delta"`
	FinishReason *string   `json:"finish_reason"`
	Logprobs     *struct{} `json:"logprobs"`
}

type chunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []chunkChoice `json:"choices"`
	// Usage is absent unless the request asked for it; then it is null on
	// every chunk but the last, as OpenAI sends it.
	Usage any `json:"usage,omitempty"`
}

var words = strings.Fields("Hello from the sluice mock vendor, answering as fast as it was told to.")

// pieces returns the n pieces of the answer text; their concatenation is
// the whole answer.
func pieces(n int) []string {
	p := make([]string, n)
	for i := range p {
		p[i] = words[i%len(words)]
		if i < n-1 {
			p[i] += " "
		}
	}
	return p
}

func completionID(seq uint64) string { return "chatcmpl-mock" + strconv.FormatUint(seq, 10) }

// usage is the usage of an answer to r with the given completion tokens.
func (r *chatRequest) usage(completion int) usage {
	p := r.promptTokens()
	return usage{PromptTokens: p, CompletionTokens: completion, TotalTokens: p + completion}
}

// completion is the plain answer to r with usage u; its text has the same
// pieces as a stream of n chunks would.
func completion(seq uint64, r *chatRequest, n int, u usage) chatCompletion {
	return chatCompletion{
		ID:      completionID(seq),
		Object:  "chat.completion",
		Created: time.Now().Unix(),
		Model:   r.model(),
		Choices: []choice{{
			Message:      message{Role: "assistant", Content: strings.Join(pieces(n), "")},
			FinishReason: "stop",
		}},
		Usage: u,
	}
}

// chunks is the streamed answer to r: n content chunks (the first carries
// the role), a final chunk with finish_reason "stop", and, when the request
// asked for it with stream_options.include_usage, a last chunk with empty
// choices and usage u (the others then carry "usage": null).
func chunks(seq uint64, r *chatRequest, n int, u usage) []chunk {
	base := chunk{ID: completionID(seq), Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: r.model()}
	withUsage := r.StreamOptions != nil && r.StreamOptions.IncludeUsage
	if withUsage {
		base.Usage = json.RawMessage("null")
	}
	out := make([]chunk, 0, n+2)
	for i, p := range pieces(n) {
		c := base
		d := delta{Content: &p}
		if i == 0 {
			d.Role = "assistant"
		}
		c.Choices = []chunkChoice{{Delta: d}}
		out = append(out, c)
	}
	stop := "stop"
	c := base
	c.Choices = []chunkChoice{{FinishReason: &stop}}
	out = append(out, c)
	if withUsage {
		c := base
		c.Choices, c.Usage = []chunkChoice{}, u
		out = append(out, c)
	}
	return out
}

type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

type list struct {
	Object string  `json:"object"`
	Data   []model `json:"data"`
}

func modelList() list {
	return list{Object: "list", Data: []model{{ID: DefaultModel, Object: "model", Created: 1700000000, OwnedBy: "mockvendor"}}}
}

// apiError is OpenAI's error shape.
type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// codeFor names the error code of a status for forced and random errors.
func codeFor(status int) string {
	switch status {
	case http.StatusTooManyRequests:
		return "rate_limit_exceeded"
	case http.StatusInternalServerError:
		return "server_error"
	}
	return strings.ReplaceAll(strings.ToLower(http.StatusText(status)), " ", "_")
}

// writeError writes an OpenAI-shaped error; 429s have type "requests" as
// OpenAI's do, other 4xx "invalid_request_error", 5xx "server_error".
func writeError(w http.ResponseWriter, status int, msg, code string) {
	typ := "invalid_request_error"
	switch {
	case status == http.StatusTooManyRequests:
		typ = "requests"
	case status >= 500:
		typ = "server_error"
	}
	writeErrorOfType(w, status, typ, msg, code)
}

// writeErrorOfType writes an OpenAI-shaped error of the given type.
func writeErrorOfType(w http.ResponseWriter, status int, typ, msg, code string) {
	var e apiError
	e.Error.Message = msg
	e.Error.Type = typ
	if code != "" {
		e.Error.Code = &code
	}
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
