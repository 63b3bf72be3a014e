package mockvendor_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

// chatBody is a chat request whose estimate is chars/4 (rounded up) +
// maxTokens.
func chatBody(chars, maxTokens int, extra string) string {
	return fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":%q}],"max_tokens":%d%s}`, strings.Repeat("a", chars), maxTokens, extra)
}

func intHeader(t *testing.T, h http.Header, name string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(h.Get(name), 10, 64)
	if err != nil {
		t.Fatalf("%s: %q", name, h.Get(name))
	}
	return n
}

func durHeader(t *testing.T, h http.Header, name string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(h.Get(name))
	if err != nil {
		t.Fatalf("%s: %q is not a Go duration", name, h.Get(name))
	}
	return d
}

// TestTokensEnforced: estimates are charged at arrival from the token
// bucket; an arrival over it gets OpenAI's 429 (type "tokens", Retry-After,
// retry-after-ms, the x-ratelimit-* headers) and takes neither tokens nor a
// request; an estimate above the burst is refused without Retry-After.
func TestTokensEnforced(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{Limit: mockvendor.Limit{
		Rate: 1, Period: time.Hour, Burst: 5, // 5 requests, one more per 12 minutes
		TokenRate: 100, TokenPeriod: time.Hour, TokenBurst: 100, // 100 tokens, one more per 36s
	}})
	path := "/v1/chat/completions"
	for i := range 3 { // 3 x 30 tokens
		status, h, e := call(t, srv, "POST", path, chatBody(13, 26, ""), nil)
		if status != 200 {
			t.Fatalf("request %d: %d %v", i, status, e)
		}
		if got, want := intHeader(t, h, "x-ratelimit-remaining-tokens"), int64(100-30*(i+1)); got != want {
			t.Errorf("request %d: remaining tokens %d, want %d", i, got, want)
		}
	}
	status, h, e := call(t, srv, "POST", path, chatBody(13, 26, ""), nil)
	if status != 429 || e["type"] != "tokens" || e["code"] != "rate_limit_exceeded" {
		t.Fatalf("30 tokens with 10 left: %d %v", status, e)
	}
	// 20 tokens missing at 36s each: 720s, less the few ms since the first.
	if ms := intHeader(t, h, "retry-after-ms"); ms < 710_000 || ms > 720_000 {
		t.Errorf("retry-after-ms %d, want about 720000", ms)
	}
	if ra := intHeader(t, h, "Retry-After"); ra != 720 {
		t.Errorf("Retry-After %d, want 720", ra)
	}
	if got := intHeader(t, h, "x-ratelimit-remaining-tokens"); got != 10 {
		t.Errorf("remaining tokens on the 429: %d, want 10", got)
	}
	if got := intHeader(t, h, "x-ratelimit-remaining-requests"); got != 2 {
		t.Errorf("remaining requests on the 429: %d, want 2 (the refusal took none)", got)
	}
	if d := durHeader(t, h, "x-ratelimit-reset-tokens"); d < 53*time.Minute || d > 54*time.Minute {
		t.Errorf("reset-tokens %v, want the 90 tokens taken back: 54m", d)
	}

	status, h, e = call(t, srv, "POST", path, chatBody(0, 101, ""), nil)
	if status != 429 || e["type"] != "tokens" || !strings.Contains(e["message"].(string), "Request too large") || h.Get("Retry-After") != "" {
		t.Errorf("101 tokens > burst 100: %d %v, Retry-After %q", status, e, h.Get("Retry-After"))
	}
	// The 10 tokens left still serve a request that fits; the request
	// bucket then has one left.
	if status, h, _ = call(t, srv, "POST", path, chatBody(4, 9, ""), nil); status != 200 || intHeader(t, h, "x-ratelimit-remaining-requests") != 1 {
		t.Errorf("10 tokens with 10 left: %d, remaining requests %q", status, h.Get("x-ratelimit-remaining-requests"))
	}

	s := srv.Stats()
	if s.TokenViolations != 2 || s.Violations != 2 || s.RateViolations != 0 || s.TokenArrivals != 4*30+101+10 {
		t.Errorf("token violations %d, violations %d, token arrivals %d", s.TokenViolations, s.Violations, s.TokenArrivals)
	}
	if got := s.MaxTokensInWindow(time.Hour); got != 100 {
		t.Errorf("most tokens in an hour %d, want the 100 charged", got)
	}
	rep, err := mustClient(t, srv).StatsWindow(t.Context(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if rep.MaxTokensInWindow != 100 || rep.ViolationsByKind["tokens"] != 2 || rep.TokenArrivals != s.TokenArrivals ||
		rep.Limit == nil || rep.Limit.TokenRate != 100 || rep.Limit.TokenPeriodSeconds != 3600 || rep.Limit.TokenBurst != 100 {
		t.Errorf("report %+v, limit %+v", rep, rep.Limit)
	}
}

func mustClient(t *testing.T, srv *mockvendortest.Server) *mockvendor.Client {
	t.Helper()
	c, err := mockvendor.NewClient(srv.URL+"/stats", srv.Client(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTokensSettled: usage above the estimate is charged when the answer
// ends; usage below it gives nothing back.
func TestTokensSettled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opt    mockvendor.Options
		stream bool
		used   int64 // usage.total_tokens: 1 prompt word + completion
	}{
		{"fixed completion above the estimate", mockvendor.Options{CompletionTokens: 50}, false, 1 + 50},
		{"fraction above the estimate, streamed", mockvendor.Options{CompletionFraction: 2.5}, true, 1 + 25},
		{"fraction below the estimate", mockvendor.Options{CompletionFraction: 0.5}, false, 1 + 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opt.Limit = mockvendor.Limit{TokenRate: 1000, TokenPeriod: 24 * time.Hour}
			srv := mockvendortest.Start(t, tc.opt)
			const est = 2 + 10 // 8 chars, max_tokens 10
			extra := ""
			if tc.stream {
				extra = `,"stream":true,"stream_options":{"include_usage":true}`
			}
			status, _, e := call(t, srv, "POST", "/v1/chat/completions", chatBody(8, 10, extra), nil)
			if status != 200 {
				t.Fatalf("%d %v", status, e)
			}
			_, h, _ := call(t, srv, "GET", "/v1/models", "", nil) // costs no token
			excess := max(tc.used-est, 0)
			if got := intHeader(t, h, "x-ratelimit-remaining-tokens"); got != 1000-est-excess {
				t.Errorf("remaining tokens %d, want %d", got, 1000-est-excess)
			}
			s := srv.Stats()
			if s.TokensUsed != tc.used || s.TokensSettled != excess || s.Requests[0].Tokens != est || s.Requests[0].Settled != excess {
				t.Errorf("used %d, settled %d, record %+v", s.TokensUsed, s.TokensSettled, s.Requests[0])
			}
			if got := s.MaxTokensInWindow(time.Hour); got != est+excess {
				t.Errorf("most tokens in an hour %d, want %d", got, est+excess)
			}
		})
	}
}

// TestUsageAsOpenAISendsIt: usage in plain answers; in a stream only when
// asked for, as "usage": null on every chunk and a last chunk with empty
// choices carrying it.
func TestUsageAsOpenAISendsIt(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{CompletionTokens: 7, StreamChunks: 3})
	post := func(body string) *http.Response {
		t.Helper()
		resp, err := srv.Client().Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	var plain struct {
		Usage map[string]int `json:"usage"`
	}
	if err := json.NewDecoder(post(`{"messages":[{"content":"two words"}]}`).Body).Decode(&plain); err != nil {
		t.Fatal(err)
	}
	if u := plain.Usage; u["prompt_tokens"] != 2 || u["completion_tokens"] != 7 || u["total_tokens"] != 9 {
		t.Errorf("plain usage %v", u)
	}

	chunksOf := func(body string) []map[string]json.RawMessage {
		t.Helper()
		var out []map[string]json.RawMessage
		sc := bufio.NewScanner(post(body).Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || data == "[DONE]" {
				continue
			}
			var c map[string]json.RawMessage
			if err := json.Unmarshal([]byte(data), &c); err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
		return out
	}
	for _, body := range []string{
		`{"messages":[{"content":"two words"}],"stream":true}`,
		`{"messages":[{"content":"two words"}],"stream":true,"stream_options":{"include_usage":false}}`,
	} {
		cs := chunksOf(body)
		if len(cs) != 3+1 {
			t.Errorf("%s: %d chunks, want 4", body, len(cs))
		}
		for i, c := range cs {
			if _, ok := c["usage"]; ok {
				t.Errorf("%s: chunk %d has usage", body, i)
			}
		}
	}
	cs := chunksOf(`{"messages":[{"content":"two words"}],"stream":true,"stream_options":{"include_usage":true}}`)
	if len(cs) != 3+2 {
		t.Fatalf("%d chunks, want 5", len(cs))
	}
	for i, c := range cs[:len(cs)-1] {
		if string(c["usage"]) != "null" || string(c["choices"]) == "[]" {
			t.Errorf("chunk %d: usage %s, choices %s", i, c["usage"], c["choices"])
		}
	}
	last := cs[len(cs)-1]
	var u map[string]int
	json.Unmarshal(last["usage"], &u)
	if string(last["choices"]) != "[]" || u["prompt_tokens"] != 2 || u["completion_tokens"] != 7 || u["total_tokens"] != 9 {
		t.Errorf("last chunk: choices %s, usage %s", last["choices"], last["usage"])
	}
}

// TestRateLimitHeaders: every answer carries OpenAI's x-ratelimit-* headers
// for the enforced buckets (errors too), reset as a Go duration; 429s also
// Retry-After and retry-after-ms.
func TestRateLimitHeaders(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{APIKey: key, Limit: mockvendor.Limit{
		Rate: 1, Period: time.Minute, Burst: 3, TokenRate: 6000, TokenPeriod: 10 * time.Hour, // a token per 6s
	}})
	auth := map[string]string{"Authorization": "Bearer " + key}
	for i, tc := range []struct {
		path, body string
		hdr        map[string]string
		status     int
		requests   int64 // remaining after it
		tokens     int64
	}{
		{"/v1/chat/completions", chatBody(0, 100, ""), auth, 200, 2, 5900},
		{"/v1/chat/completions", chatBody(0, 100, ""), nil, 401, 1, 5900}, // a request, no token
		{"/v1/models", "", auth, 405, 0, 5900},
		{"/v1/chat/completions", chatBody(0, 100, ""), auth, 429, 0, 5900},
	} {
		status, h, _ := call(t, srv, "POST", tc.path, tc.body, tc.hdr)
		if status != tc.status {
			t.Fatalf("answer %d: %d, want %d", i, status, tc.status)
		}
		if intHeader(t, h, "x-ratelimit-limit-requests") != 3 || intHeader(t, h, "x-ratelimit-limit-tokens") != 6000 { // bucket sizes
			t.Errorf("answer %d: limits %q %q", i, h.Get("x-ratelimit-limit-requests"), h.Get("x-ratelimit-limit-tokens"))
		}
		// A slow machine may see a token or two refilled.
		if r := intHeader(t, h, "x-ratelimit-remaining-requests"); r != tc.requests {
			t.Errorf("answer %d: remaining requests %d, want %d", i, r, tc.requests)
		}
		if r := intHeader(t, h, "x-ratelimit-remaining-tokens"); r < tc.tokens || r > tc.tokens+5 {
			t.Errorf("answer %d: remaining tokens %d, want %d", i, r, tc.tokens)
		}
		if d := durHeader(t, h, "x-ratelimit-reset-requests"); d < time.Minute || d > 3*time.Minute {
			t.Errorf("answer %d: reset-requests %v", i, d)
		}
		if d := durHeader(t, h, "x-ratelimit-reset-tokens"); d < 500*time.Second || d > 600*time.Second {
			t.Errorf("answer %d: reset-tokens %v", i, d)
		}
		if got := h.Get("retry-after-ms") != ""; got != (status == 429) {
			t.Errorf("answer %d: retry-after-ms %q", i, h.Get("retry-after-ms"))
		}
		if status == 429 {
			ms, s := intHeader(t, h, "retry-after-ms"), intHeader(t, h, "Retry-After")
			if ms < 50_000 || ms > 60_000 || s != (ms+999)/1000 {
				t.Errorf("429: Retry-After %d, retry-after-ms %d, want about a minute", s, ms)
			}
		}
	}
	// Nothing enforced: no x-ratelimit-* header.
	free := mockvendortest.Start(t, mockvendor.Options{})
	if _, h, _ := call(t, free, "POST", "/v1/chat/completions", "{}", nil); h.Get("x-ratelimit-limit-tokens") != "" || h.Get("x-ratelimit-limit-requests") != "" {
		t.Errorf("headers without a limit: %v", h)
	}
}

// TestTokensUnderLoad: 16 clients send requests of random sizes in
// parallel; the vendor's token decisions are exact: no more than the burst
// is charged, no fitting request was refused while the bucket could take
// it (everything refused had more than what was left at the end), and the
// counters add up.
func TestTokensUnderLoad(t *testing.T) {
	const burst = 5000
	// Usage (at most a word and a completion token) never exceeds the
	// estimate: nothing is settled, what is charged is the estimates.
	srv := mockvendortest.Start(t, mockvendor.Options{CompletionTokens: 1,
		Limit: mockvendor.Limit{TokenRate: burst, TokenPeriod: 1000 * time.Hour}})
	var (
		mu                 sync.Mutex
		sent, admitted     int64
		refusedMin, status = int64(1 << 62), map[int]int{}
		wg                 sync.WaitGroup
	)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(g), 9))
			for range 25 {
				chars, maxTok := rnd.IntN(400), 1+rnd.IntN(80)
				est := int64((chars+3)/4 + maxTok)
				extra := ""
				if rnd.IntN(2) == 0 {
					extra = `,"stream":true`
				}
				resp, err := srv.Client().Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(chatBody(chars, maxTok, extra)))
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				sent += est
				status[resp.StatusCode]++
				switch resp.StatusCode {
				case 200:
					admitted += est
				case 429:
					refusedMin = min(refusedMin, est)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	s := srv.Stats()
	if status[200]+status[429] != 400 || int64(status[429]) != s.TokenViolations || s.TokenArrivals != sent {
		t.Errorf("statuses %v, token violations %d, token arrivals %d of %d sent", status, s.TokenViolations, s.TokenArrivals, sent)
	}
	if admitted > burst || s.MaxTokensInWindow(time.Hour) != admitted || s.TokensSettled != 0 {
		t.Errorf("admitted %d tokens (burst %d), most in an hour %d, settled %d", admitted, burst, s.MaxTokensInWindow(time.Hour), s.TokensSettled)
	}
	// The bucket only empties (a token per 720s refills), so anything
	// refused was larger than what was left at the end.
	if status[429] > 0 && burst-admitted >= refusedMin {
		t.Errorf("%d tokens left, yet a request of %d was refused", burst-admitted, refusedMin)
	}
	if status[429] == 0 {
		t.Errorf("demand of %d tokens never exceeded the burst of %d", sent, burst)
	}
}

// TestCancelledStreamsKeepTheirEstimate: streams whose clients go away
// mid-answer keep their estimate charged and settle nothing; an answer the
// vendor cuts settles as if whole; finished answers settle their excess.
func TestCancelledStreamsKeepTheirEstimate(t *testing.T) {
	const n = 8
	srv := mockvendortest.Start(t, mockvendor.Options{CompletionTokens: 2000, StreamInterval: time.Hour,
		Limit: mockvendor.Limit{TokenRate: 1_000_000, TokenPeriod: 1000 * time.Hour}})
	srv.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = 2 * n
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	streams := make([]*http.Response, n)
	for i := range streams {
		wg.Go(func() { streams[i] = openStream(t, ctx, srv) }) // default allowance: 1024 each
	}
	for range n {
		wg.Go(func() {
			status, _, e := call(t, srv, "POST", "/v1/chat/completions", `{"messages":[]}`, nil)
			if status != 200 {
				t.Errorf("plain answer: %d %v", status, e)
			}
		})
	}
	wg.Wait() // every stream is in flight, every plain answer done
	cancel()
	for _, r := range streams {
		if r != nil {
			r.Body.Close()
		}
	}
	cut, _, _ := call(t, srv, "POST", "/v1/chat/completions", `{"messages":[]}`, // streams here pause an hour
		map[string]string{mockvendor.HeaderStreamCut: "1", mockvendor.HeaderLatency: "0s"})
	srv.HTTP.Close() // waits for every handler to end
	s := srv.Stats()
	const est, used = 1024, 2000 // no prompt words
	finished := int64(n + 1)     // the plain answers and the cut one
	if cut != 200 || s.ByStatus[mockvendor.StatusClientGone] != n || s.StreamCuts != 1 {
		t.Fatalf("cut %d, stats %+v", cut, s)
	}
	if s.TokenArrivals != (2*n+1)*est || s.TokensUsed != finished*used || s.TokensSettled != finished*(used-est) {
		t.Errorf("token arrivals %d, used %d, settled %d", s.TokenArrivals, s.TokensUsed, s.TokensSettled)
	}
	if got, want := s.MaxTokensInWindow(time.Hour), (2*n+1)*est+finished*(used-est); got != want {
		t.Errorf("most tokens in an hour %d, want %d", got, want)
	}
}

// TestCompletionTokensHeader: X-Mock-Completion-Tokens sets one answer's
// usage, above or below its estimate, and the excess is settled.
func TestCompletionTokensHeader(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{CompletionTokens: 3})
	for _, tc := range []struct {
		hdr     string
		status  int
		settled int64
	}{
		{"0", 200, 0},
		{"500", 200, 500 - 10},
		{"-1", 400, 0},
		{"many", 400, 0},
	} {
		srv.Reset()
		status, _, e := call(t, srv, "POST", "/v1/chat/completions", chatBody(0, 10, ""), map[string]string{mockvendor.HeaderCompletionTokens: tc.hdr})
		if s := srv.Stats(); status != tc.status || s.TokensSettled != tc.settled {
			t.Errorf("%s: %d %v, settled %d, want %d and %d", tc.hdr, status, e, s.TokensSettled, tc.status, tc.settled)
		}
		if status == 400 && e["code"] != "invalid_mock_header" {
			t.Errorf("%s: %v", tc.hdr, e)
		}
	}
}
