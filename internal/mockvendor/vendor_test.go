package mockvendor_test

import (
	"bufio"
	"cmp"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

const key = "vendor-key"

func sdk(srv *mockvendortest.Server, opts ...option.RequestOption) *openai.Client {
	c := openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(srv.URL + "/v1/"),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
		option.WithHTTPClient(srv.Client()),
	}, opts...)...)
	return &c
}

func chatParams() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say hello to the mock")},
	}
}

func TestChatCompletionShape(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{APIKey: key, StreamChunks: 3})
	c := sdk(srv)
	got, err := c.Chat.Completions.New(t.Context(), chatParams())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got.ID, "chatcmpl-") || got.Model != "gpt-test" || got.Created == 0 {
		t.Errorf("id %q model %q created %d", got.ID, got.Model, got.Created)
	}
	if string(got.Object) != "chat.completion" {
		t.Errorf("object %q", got.Object)
	}
	if len(got.Choices) != 1 {
		t.Fatalf("choices %d", len(got.Choices))
	}
	ch := got.Choices[0]
	if ch.Index != 0 || ch.FinishReason != "stop" || string(ch.Message.Role) != "assistant" || ch.Message.Content != "Hello from the" {
		t.Errorf("choice %+v", ch)
	}
	if u := got.Usage; u.PromptTokens != 5 || u.CompletionTokens != 3 || u.TotalTokens != 8 {
		t.Errorf("usage %+v", u)
	}
	s := srv.Stats()
	if s.Arrivals != 1 || s.ByStatus[200] != 1 || s.InFlight != 0 || s.MaxInFlight != 1 || len(s.Requests) != 1 {
		t.Errorf("stats %+v", s)
	}
	if r := s.Requests[0]; r.Status != 200 || r.End < r.Start {
		t.Errorf("record %+v", r)
	}
}

func TestStreamingShape(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{APIKey: key, StreamChunks: 5, StreamInterval: time.Millisecond})
	c := sdk(srv)
	p := chatParams()
	p.StreamOptions.IncludeUsage = openai.Bool(true)
	stream := c.Chat.Completions.NewStreaming(t.Context(), p)
	var acc openai.ChatCompletionAccumulator
	n := 0
	for stream.Next() {
		ch := stream.Current()
		if string(ch.Object) != "chat.completion.chunk" || ch.Model != "gpt-test" {
			t.Errorf("chunk %d: object %q model %q", n, ch.Object, ch.Model)
		}
		acc.AddChunk(ch)
		n++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 5+2 { // content chunks, finish chunk, usage chunk
		t.Errorf("%d chunks, want 7", n)
	}
	plain, err := c.Chat.Completions.New(t.Context(), chatParams())
	if err != nil {
		t.Fatal(err)
	}
	if got := acc.Choices[0].Message.Content; got != strings.Join(strings.Fields("Hello from the sluice mock"), " ") {
		t.Errorf("streamed content %q", got)
	}
	if acc.Choices[0].FinishReason != "stop" || acc.Usage.CompletionTokens != 5 || acc.Usage.PromptTokens != 5 {
		t.Errorf("finish %q usage %+v", acc.Choices[0].FinishReason, acc.Usage)
	}
	if plain.Choices[0].Message.Content != acc.Choices[0].Message.Content {
		t.Errorf("plain %q != streamed %q", plain.Choices[0].Message.Content, acc.Choices[0].Message.Content)
	}
	if s := srv.Stats(); s.ByStatus[200] != 2 || s.StreamCuts != 0 {
		t.Errorf("stats %+v", s)
	}
}

// openStream starts a streamed completion and returns once its first chunk
// has arrived: the request is then in flight at the vendor.
func openStream(t *testing.T, ctx context.Context, srv *mockvendortest.Server) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","messages":[],"stream":true}`))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Error(err)
		return nil
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: {") {
		t.Errorf("first line %q, %v", line, err)
	}
	return resp
}

// TestFlushAndClientGone proves each chunk is flushed (the first arrives
// while the vendor waits an hour before the next) and that a client going
// away is recorded as 499 and frees its in-flight slot.
func TestFlushAndClientGone(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{StreamInterval: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	resp := openStream(t, ctx, srv)
	if s := srv.Stats(); s.InFlight != 1 {
		t.Errorf("in flight %d, want 1", s.InFlight)
	}
	cancel()
	resp.Body.Close()
	srv.HTTP.Close() // waits for the handler to end
	s := srv.Stats()
	if s.InFlight != 0 || s.ByStatus[mockvendor.StatusClientGone] != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestInFlightExactUnderLoad(t *testing.T) {
	const n = 100
	srv := mockvendortest.Start(t, mockvendor.Options{StreamInterval: time.Hour})
	srv.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = n
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	streams := make([]*http.Response, n)
	for i := range streams {
		wg.Go(func() { streams[i] = openStream(t, ctx, srv) })
	}
	wg.Wait() // every stream has delivered its first chunk
	defer func() {
		for _, r := range streams {
			if r != nil {
				r.Body.Close()
			}
		}
	}()
	s := srv.Stats()
	if s.InFlight != n || s.MaxInFlight != n || s.Arrivals != n {
		t.Errorf("held: in flight %d, max %d, arrivals %d; want %d", s.InFlight, s.MaxInFlight, s.Arrivals, n)
	}
	cancel()
	srv.HTTP.Close()
	s = srv.Stats()
	if s.InFlight != 0 || s.MaxInFlight != n || s.ByStatus[mockvendor.StatusClientGone] != n {
		t.Errorf("after: %+v", s)
	}
}

func TestStatsConcurrent(t *testing.T) {
	const clients, each = 100, 5
	srv := mockvendortest.Start(t, mockvendor.Options{LatencyMax: 5 * time.Millisecond, ErrorRate: 0.2})
	srv.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = clients
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[int]int64{}
	for range clients {
		wg.Go(func() {
			for range each {
				resp, err := srv.Client().Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				seen[resp.StatusCode]++
				mu.Unlock()
			}
		})
		go srv.Stats() // snapshots race with the traffic
	}
	wg.Wait()
	s := srv.Stats()
	if s.Arrivals != clients*each || s.InFlight != 0 || len(s.Requests) != clients*each {
		t.Fatalf("arrivals %d in flight %d records %d", s.Arrivals, s.InFlight, len(s.Requests))
	}
	for code, n := range seen {
		if s.ByStatus[code] != n {
			t.Errorf("status %d: vendor counted %d, clients saw %d", code, s.ByStatus[code], n)
		}
	}
	if s.MaxInFlight < 1 || s.MaxInFlight > clients {
		t.Errorf("max in flight %d", s.MaxInFlight)
	}
	// The counter agrees with the overlap of the recorded intervals; ties
	// (same nanosecond) may have been ordered either way.
	for i := 1; i < len(s.Requests); i++ {
		if s.Requests[i].Start < s.Requests[i-1].Start {
			t.Fatal("records not in arrival order")
		}
	}
	if lo, hi := overlap(s.Requests, false), overlap(s.Requests, true); s.MaxInFlight < lo || s.MaxInFlight > hi {
		t.Errorf("max in flight %d outside the records' overlap [%d,%d]", s.MaxInFlight, lo, hi)
	}
}

type event struct {
	at    time.Duration
	delta int
}

// overlap is the largest number of overlapping [Start, End] intervals, ties
// broken with arrivals first or ends first.
func overlap(reqs []mockvendor.Request, arrivalsFirst bool) int {
	var evs []event
	for _, r := range reqs {
		evs = append(evs, event{r.Start, 1}, event{r.End, -1})
	}
	slices.SortFunc(evs, func(a, b event) int {
		if c := cmp.Compare(a.at, b.at); c != 0 {
			return c
		}
		if arrivalsFirst {
			return b.delta - a.delta
		}
		return a.delta - b.delta
	})
	cur, best := 0, 0
	for _, e := range evs {
		cur += e.delta
		best = max(best, cur)
	}
	return best
}
