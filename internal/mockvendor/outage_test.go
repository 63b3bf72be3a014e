package mockvendor_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

// TestScheduledOutage: during the scheduled window every request gets the
// outage's status at once (before auth, without the latency, taking nothing
// from the limit); ending it by hand brings the vendor back; a Reset
// schedules it again from the new epoch.
func TestScheduledOutage(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{
		APIKey:     key,
		LatencyMin: time.Hour, // an outage answers at once
		Limit:      mockvendor.Limit{Rate: 1, Period: time.Hour, Burst: 1},
		Outage:     mockvendor.Outage{Duration: time.Hour, Status: 503},
	})
	for range 3 {
		status, h, e := call(t, srv, "POST", "/v1/chat/completions", "{}", nil)
		if status != 503 || e["type"] != "server_error" || h.Get("Retry-After") != "" {
			t.Fatalf("during the outage: %d %v", status, e)
		}
	}
	rep, err := mustClient(t, srv).StatsWindow(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OutageActive || rep.OutageStatus != 503 || rep.OutageAnswers != 3 || rep.ByStatus[503] != 3 || rep.Violations != 0 {
		t.Errorf("report during the outage: %+v", rep)
	}
	srv.Vendor.EndOutage()
	auth := map[string]string{"Authorization": "Bearer " + key, mockvendor.HeaderLatency: "0s"}
	if status, _, e := call(t, srv, "POST", "/v1/chat/completions", "{}", auth); status != 200 {
		t.Fatalf("after the outage: %d %v (the outage took the only request token?)", status, e)
	}
	if s := srv.Stats(); s.OutageAnswers != 3 {
		t.Errorf("outage answers %d", s.OutageAnswers)
	}
	srv.Reset()
	if status, _, _ := call(t, srv, "POST", "/v1/chat/completions", "{}", auth); status != 503 {
		t.Errorf("after a reset: %d, want the scheduled outage again", status)
	}

	later := mockvendortest.Start(t, mockvendor.Options{Outage: mockvendor.Outage{Start: time.Hour, Duration: time.Hour}})
	if status, _, _ := call(t, later, "POST", "/v1/chat/completions", "{}", nil); status != 200 {
		t.Errorf("before a scheduled outage: %d", status)
	}
}

// TestOutageByClient: Client.StartOutage and EndOutage toggle an outage of
// the vendor from another process, through POST and DELETE /outage.
func TestOutageByClient(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{RetryAfter: 3 * time.Second})
	c := mustClient(t, srv)
	if err := c.StartOutage(t.Context(), 500, 0); err != nil {
		t.Fatal(err)
	}
	if status, _, e := call(t, srv, "POST", "/v1/chat/completions", "{}", nil); status != 500 || e["code"] != "server_error" {
		t.Errorf("outage: %d %v", status, e)
	}
	if err := c.StartOutage(t.Context(), 429, time.Hour); err != nil { // replaces it
		t.Fatal(err)
	}
	if status, h, e := call(t, srv, "POST", "/v1/chat/completions", "{}", nil); status != 429 || h.Get("Retry-After") != "3" || h.Get("retry-after-ms") != "3000" {
		t.Errorf("429 outage: %d %v, Retry-After %q", status, e, h.Get("Retry-After"))
	}
	srv.Reset() // an outage started by hand survives a reset
	if rep, err := c.StatsWindow(t.Context(), time.Second); err != nil || !rep.OutageActive || rep.OutageStatus != 429 {
		t.Errorf("after a reset: %+v, %v", rep, err)
	}
	if err := c.EndOutage(t.Context()); err != nil {
		t.Fatal(err)
	}
	if status, _, _ := call(t, srv, "POST", "/v1/chat/completions", "{}", nil); status != 200 {
		t.Errorf("after the outage: %d", status)
	}
	if err := c.StartOutage(t.Context(), 200, 0); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("an outage answering 200: %v", err)
	}
	for _, q := range []string{"?status=abc", "?for=soon", "?for=-1s", "?status=600"} {
		if status, _, e := call(t, srv, "POST", "/outage"+q, "", nil); status != 400 || e["code"] != "invalid_outage" {
			t.Errorf("POST /outage%s: %d %v", q, status, e)
		}
	}
	if status, _, _ := call(t, srv, "GET", "/outage", "", nil); status != 405 {
		t.Errorf("GET /outage: %d", status)
	}
	if s := srv.Stats(); s.Arrivals != 1 {
		t.Errorf("control requests measured: %d arrivals", s.Arrivals)
	}
}

func TestInvalidTokenAndOutageOptions(t *testing.T) {
	for name, o := range map[string]mockvendor.Options{
		"negative token rate":      {Limit: mockvendor.Limit{TokenRate: -1}},
		"negative token burst":     {Limit: mockvendor.Limit{TokenBurst: -1}},
		"negative token period":    {Limit: mockvendor.Limit{TokenPeriod: -time.Second}},
		"negative default max":     {DefaultMaxTokens: -1},
		"negative completion":      {CompletionTokens: -1},
		"NaN completion fraction":  {CompletionFraction: math.NaN()},
		"negative outage duration": {Outage: mockvendor.Outage{Duration: -time.Second}},
		"outage answering 200":     {Outage: mockvendor.Outage{Duration: time.Second, Status: 200}},
	} {
		if _, err := mockvendor.New(o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	v, err := mockvendor.New(mockvendor.Options{Limit: mockvendor.Limit{TokenRate: 30000}})
	if err != nil {
		t.Fatal(err)
	}
	if o := v.Options(); o.Limit.TokenPeriod != time.Minute || o.Limit.TokenBurst != 30000 || o.DefaultMaxTokens != mockvendor.DefaultMaxTokens {
		t.Errorf("defaults: %+v", o)
	}
	if err := v.StartOutage(600, 0); err == nil {
		t.Error("StartOutage(600): no error")
	}
}
