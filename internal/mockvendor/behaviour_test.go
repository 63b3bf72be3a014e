package mockvendor_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

// call sends one raw request and returns the status, headers and the
// decoded OpenAI error (if the body is one).
func call(t *testing.T, srv *mockvendortest.Server, method, path, body string, hdr map[string]string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Error map[string]any `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &doc)
	return resp.StatusCode, resp.Header, doc.Error
}

func TestErrorsInOpenAIShape(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{APIKey: key})
	auth := map[string]string{"Authorization": "Bearer " + key}
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      map[string]string
		status                   int
		typ, code                string
	}{
		{"unknown path", "POST", "/v1/nope", "{}", auth, 404, "invalid_request_error", "unknown_url"},
		{"other path", "GET", "/", "", nil, 404, "invalid_request_error", "unknown_url"},
		{"wrong method", "GET", "/v1/chat/completions", "", auth, 405, "invalid_request_error", "method_not_allowed"},
		{"no key", "POST", "/v1/chat/completions", "{}", nil, 401, "invalid_request_error", "invalid_api_key"},
		{"wrong key", "POST", "/v1/chat/completions", "{}", map[string]string{"Authorization": "Bearer nope"}, 401, "invalid_request_error", "invalid_api_key"},
		{"malformed json", "POST", "/v1/chat/completions", `{"model":`, auth, 400, "invalid_request_error", "invalid_json"},
		{"not an object", "POST", "/v1/chat/completions", `[1]`, auth, 400, "invalid_request_error", "invalid_json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, e := call(t, srv, tc.method, tc.path, tc.body, tc.hdr)
			if status != tc.status || e["type"] != tc.typ || e["code"] != tc.code || e["message"] == "" {
				t.Errorf("got %d %v", status, e)
			}
		})
	}
	if s := srv.Stats(); s.Arrivals != 7 || s.ByStatus[401] != 2 || s.ByStatus[404] != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestAuthViaSDK(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{APIKey: key})
	_, err := sdk(srv, option.WithAPIKey("wrong")).Chat.Completions.New(t.Context(), chatParams())
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || apiErr.Code != "invalid_api_key" {
		t.Fatalf("got %v", err)
	}
	if _, err := sdk(srv).Chat.Completions.New(t.Context(), chatParams()); err != nil {
		t.Fatal(err)
	}
}

func TestModels(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{})
	page, err := sdk(srv).Models.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != mockvendor.DefaultModel {
		t.Errorf("models %+v", page.Data)
	}
}

func TestForcedStatus(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{RetryAfter: 1500 * time.Millisecond, ErrorRate: 1})
	for _, tc := range []struct {
		header     string
		status     int
		retryAfter string
		typ        string
	}{
		{"503", 503, "", "server_error"},
		{"429", 429, "2", "requests"},
		{"400", 400, "", "invalid_request_error"},
		{"200", 200, "", ""}, // also skips the 100% ErrorRate
		{"abc", 400, "", "invalid_request_error"},
		{"99", 400, "", "invalid_request_error"},
	} {
		t.Run(tc.header, func(t *testing.T) {
			status, h, e := call(t, srv, "POST", "/v1/chat/completions", "{}", map[string]string{mockvendor.HeaderStatus: tc.header})
			if status != tc.status || h.Get("Retry-After") != tc.retryAfter || (e == nil) != (tc.typ == "") || (e != nil && e["type"] != tc.typ) {
				t.Errorf("got %d Retry-After %q %v", status, h.Get("Retry-After"), e)
			}
		})
	}
	// Forced status through the SDK, which sees a typed error.
	_, err := sdk(srv, option.WithHeader(mockvendor.HeaderStatus, "503")).Chat.Completions.New(t.Context(), chatParams())
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 {
		t.Errorf("got %v", err)
	}
}

func TestRandomErrors(t *testing.T) {
	for _, tc := range []struct {
		opt    mockvendor.Options
		status int
	}{
		{mockvendor.Options{ErrorRate: 1}, 500},
		{mockvendor.Options{RateLimitRate: 1}, 429},
		{mockvendor.Options{ErrorRate: 0, RateLimitRate: 0}, 200},
	} {
		srv := mockvendortest.Start(t, tc.opt)
		for range 5 {
			status, h, _ := call(t, srv, "POST", "/v1/chat/completions", "{}", nil)
			if status != tc.status {
				t.Fatalf("%+v: got %d", tc.opt, status)
			}
			if status == 429 && h.Get("Retry-After") != "1" {
				t.Errorf("Retry-After %q", h.Get("Retry-After"))
			}
		}
	}
}

func TestLatency(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{LatencyMin: 20 * time.Millisecond, LatencyMax: 30 * time.Millisecond})
	call(t, srv, "POST", "/v1/chat/completions", "{}", nil)
	call(t, srv, "POST", "/v1/chat/completions", "{}", map[string]string{mockvendor.HeaderLatency: "60ms"})
	r := srv.Stats().Requests
	if d := r[0].End - r[0].Start; d < 20*time.Millisecond {
		t.Errorf("range latency %v < 20ms", d)
	}
	if d := r[1].End - r[1].Start; d < 60*time.Millisecond {
		t.Errorf("forced latency %v < 60ms", d)
	}
	if status, _, _ := call(t, srv, "POST", "/v1/chat/completions", "{}", map[string]string{mockvendor.HeaderLatency: "soon"}); status != 400 {
		t.Errorf("bad latency header: %d", status)
	}

	// The header overrides an hour of latency: the call returns at all.
	slow := mockvendortest.Start(t, mockvendor.Options{LatencyMin: time.Hour})
	if status, _, _ := call(t, slow, "POST", "/v1/chat/completions", "{}", map[string]string{mockvendor.HeaderLatency: "0s"}); status != 200 {
		t.Errorf("forced zero latency: %d", status)
	}
}

func TestStreamCut(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{StreamChunks: 6})
	cut := option.WithHeader(mockvendor.HeaderStreamCut, "1")
	stream := sdk(srv, cut).Chat.Completions.NewStreaming(t.Context(), chatParams())
	n := 0
	for stream.Next() {
		n++
	}
	if stream.Err() == nil || n != 3 {
		t.Errorf("cut stream: %d chunks, err %v; want 3 and an error", n, stream.Err())
	}
	if _, err := sdk(srv, cut).Chat.Completions.New(t.Context(), chatParams()); err == nil {
		t.Error("cut plain answer: no error")
	}
	s := srv.Stats()
	if s.StreamCuts != 2 || s.ByStatus[200] != 2 || s.InFlight != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestStreamCutRate(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{StreamCutRate: 1})
	for _, hdr := range []string{"", "0"} {
		var opts []option.RequestOption
		if hdr != "" {
			opts = append(opts, option.WithHeader(mockvendor.HeaderStreamCut, hdr))
		}
		stream := sdk(srv, opts...).Chat.Completions.NewStreaming(t.Context(), chatParams())
		for stream.Next() {
		}
		if cut := stream.Err() != nil; cut != (hdr == "") {
			t.Errorf("header %q: err %v", hdr, stream.Err())
		}
	}
	// Plain answers are not cut by the rate.
	if _, err := sdk(srv).Chat.Completions.New(t.Context(), chatParams()); err != nil {
		t.Error(err)
	}
}

func TestConcurrencyEnforced(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{StreamInterval: time.Hour, Limit: mockvendor.Limit{Concurrency: 2}})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for range 2 {
		defer openStream(t, ctx, srv).Body.Close()
	}
	status, h, e := call(t, srv, "POST", "/v1/chat/completions", "{}", nil)
	if status != 429 || h.Get("Retry-After") != "1" || e["code"] != "rate_limit_exceeded" {
		t.Errorf("third request: %d %q %v", status, h.Get("Retry-After"), e)
	}
	s := srv.Stats()
	if s.Violations != 1 || s.ConcurrencyViolations != 1 || s.RateViolations != 0 || s.MaxInFlight != 3 || s.InFlight != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestRateEnforced(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{Limit: mockvendor.Limit{Rate: 1, Period: time.Hour, Burst: 3}})
	var got []int
	var retry string
	for range 5 {
		status, h, _ := call(t, srv, "POST", "/v1/chat/completions", "{}", nil)
		got = append(got, status)
		retry = h.Get("Retry-After")
	}
	if want := []int{200, 200, 200, 429, 429}; !equal(got, want) {
		t.Errorf("statuses %v, want %v", got, want)
	}
	if retry < "3590" || retry > "3600" || len(retry) != 4 {
		t.Errorf("Retry-After %q, want about an hour", retry)
	}
	s := srv.Stats()
	if s.Violations != 2 || s.RateViolations != 2 || s.ConcurrencyViolations != 0 {
		t.Errorf("stats %+v", s)
	}
	srv.Reset() // refills the bucket
	if status, _, _ := call(t, srv, "POST", "/v1/chat/completions", "{}", nil); status != 200 {
		t.Errorf("after reset: %d", status)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStatsEndpoint(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{Limit: mockvendor.Limit{Concurrency: 3, Rate: 10, Burst: 5}})
	for range 4 {
		call(t, srv, "POST", "/v1/chat/completions", "{}", nil)
	}
	call(t, srv, "POST", "/v1/chat/completions", "{}", map[string]string{mockvendor.HeaderStatus: "503"})
	get := func(query string) (int, mockvendor.Report) {
		resp, err := srv.Client().Get(srv.URL + "/stats" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r mockvendor.Report
		json.NewDecoder(resp.Body).Decode(&r)
		return resp.StatusCode, r
	}
	status, r := get("")
	if status != 200 || r.Arrivals != 5 || r.ByStatus[200] != 4 || r.ByStatus[503] != 1 || r.MaxInFlight != 1 ||
		r.InFlight != 0 || r.Window != "1s" || r.MaxInWindow != 5 || r.Violations != 0 || r.Retained != 5 ||
		r.Limit == nil || r.Limit.Concurrency != 3 || r.Limit.Rate != 10 || r.Limit.Burst != 5 || r.Limit.PeriodSeconds != 1 {
		t.Errorf("GET /stats: %d %+v", status, r)
	}
	if status, r := get("?window=0s"); status != 200 || r.Window != "0s" || r.MaxInWindow < 1 {
		t.Errorf("window=0s: %d %+v", status, r)
	}
	if status, _ := get("?window=often"); status != 400 {
		t.Errorf("bad window: %d", status)
	}
	resp, err := srv.Client().Post(srv.URL+"/stats/reset", "", nil)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("reset: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	if _, r := get(""); r.Arrivals != 0 || len(r.ByStatus) != 0 || r.MaxInWindow != 0 || r.MaxInFlight != 0 {
		t.Errorf("after reset: %+v", r)
	}
	if status, _, _ := call(t, srv, "GET", "/stats/reset", "", nil); status != 405 {
		t.Errorf("GET /stats/reset: %d", status)
	}
	if status, _, _ := call(t, srv, "GET", "/healthz", "", nil); status != 200 {
		t.Errorf("healthz: %d", status)
	}
	if s := srv.Stats(); s.Arrivals != 0 {
		t.Errorf("own endpoints were counted: %d", s.Arrivals)
	}
}

func TestResetWhileInFlight(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{StreamInterval: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	resp := openStream(t, ctx, srv)
	srv.Reset()
	if s := srv.Stats(); s.InFlight != 1 || s.MaxInFlight != 1 || s.Arrivals != 0 || len(s.Requests) != 0 {
		t.Errorf("after reset: %+v", s)
	}
	cancel()
	resp.Body.Close()
	srv.HTTP.Close()
	if s := srv.Stats(); s.InFlight != 0 || len(s.ByStatus) != 0 {
		t.Errorf("after the old request ended: %+v", s)
	}
}

func TestRecordsBounded(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{MaxRecords: 3})
	for i := range 5 {
		call(t, srv, "POST", "/v1/chat/completions", "{}", map[string]string{mockvendor.HeaderStatus: []string{"500", "501", "502", "503", "504"}[i]})
	}
	s := srv.Stats()
	if s.Arrivals != 5 || s.Dropped != 2 || len(s.Requests) != 3 {
		t.Fatalf("stats %+v", s)
	}
	for i, r := range s.Requests {
		if r.Status != 502+i || (i > 0 && r.Start < s.Requests[i-1].Start) {
			t.Errorf("record %d: %+v", i, r)
		}
	}
}

func TestInvalidOptions(t *testing.T) {
	for _, opt := range []mockvendor.Options{
		{ErrorRate: 1.5},
		{ErrorRate: 0.6, RateLimitRate: 0.6},
		{StreamCutRate: -0.1},
		{LatencyMin: -time.Second},
		{Limit: mockvendor.Limit{Burst: -1}},
	} {
		if _, err := mockvendor.New(opt); err == nil {
			t.Errorf("%+v accepted", opt)
		}
	}
}
