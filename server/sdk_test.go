package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// openaiVendor answers chat completions as OpenAI does: a chat.completion
// object, or with "stream": true chat.completion.chunk events and
// "data: [DONE]". The reply is the words "hello from the vendor".
var openaiVendor http.HandlerFunc = func(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"message":"bad json","type":"invalid_request_error","code":"x"}}`, 400)
		return
	}
	words := []string{"hello", " from", " the", " vendor"}
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":%q,`+
			`"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":%q}}],`+
			`"usage":{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}}`, req.Model, strings.Join(words, ""))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	for i, word := range words {
		finish := "null"
		if i == len(words)-1 {
			finish = `"stop"`
		}
		fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":%q,"+
			"\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":%s}]}\n\n", req.Model, word, finish)
		w.(http.Flusher).Flush()
	}
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
}

// TestOpenAISDK uses the official Go SDK, its retries off, as the client of
// the gateway on the real semaphore: a plain and a streaming completion.
func TestOpenAISDK(t *testing.T) {
	h := newRealHarness(t, openaiVendor, nil)
	client := openai.NewClient(option.WithBaseURL(h.gw.URL+"/v1"), option.WithAPIKey("k1"), option.WithMaxRetries(0))
	params := openai.ChatCompletionNewParams{
		Model:    "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}
	ctx := context.Background()

	c, err := client.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Choices[0].Message.Content; got != "hello from the vendor" || c.Model != "gpt-test" {
		t.Errorf("completion %q from %q", got, c.Model)
	}

	stream := client.Chat.Completions.NewStreaming(ctx, params)
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if got := acc.Choices[0].Message.Content; got != "hello from the vendor" || chunks != 4 {
		t.Errorf("stream %q in %d chunks", got, chunks)
	}

	// A gateway error reaches the SDK as an *openai.Error with our code.
	bad := openai.NewClient(option.WithBaseURL(h.gw.URL+"/v1"), option.WithAPIKey("wrong"), option.WithMaxRetries(0))
	_, err = bad.Chat.Completions.New(ctx, params)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != "invalid_api_key" {
		t.Errorf("err %v", err)
	}
	if h.hits.Load() != 2 {
		t.Errorf("%d vendor hits", h.hits.Load())
	}
}
