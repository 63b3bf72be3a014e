package mockvendor_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

func TestClientStatsAndReset(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{Limit: mockvendor.Limit{Concurrency: 2, Rate: 5, Burst: 3}})
	c, err := mockvendor.NewClient(srv.URL+"/stats", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"m","messages":[]}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	rep, err := c.Stats(t.Context(), mockvendor.StatsQuery{Window: time.Second, Step: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Arrivals != 4 || rep.MaxInWindow != 4 || rep.Limit == nil || rep.Limit.Burst != 3 {
		t.Errorf("stats: arrivals %d, max in window %d, limit %+v", rep.Arrivals, rep.MaxInWindow, rep.Limit)
	}
	if len(rep.Series) == 0 || rep.SeriesStepSeconds != 0.05 {
		t.Fatalf("series: step %v, %d points", rep.SeriesStepSeconds, len(rep.Series))
	}
	sum, most := 0, 0
	for _, p := range rep.Series {
		sum += p.Arrivals
		most = max(most, p.MaxInWindow)
	}
	if sum != 4 || most != rep.MaxInWindow {
		t.Errorf("series: %d arrivals, max in window %d; want 4 and %d", sum, most, rep.MaxInWindow)
	}
	if rep, err := c.StatsWindow(t.Context(), time.Second); err != nil || rep.Series != nil {
		t.Errorf("without a step: %v, series %v", err, rep.Series)
	}
	if err := c.Reset(t.Context()); err != nil {
		t.Fatal(err)
	}
	if rep, err := c.StatsWindow(t.Context(), 0); err != nil || rep.Arrivals != 0 {
		t.Errorf("after Reset: %v, %+v", err, rep)
	}
}

func TestClientErrors(t *testing.T) {
	for _, u := range []string{"", "ftp://x/stats", "http://", "::"} {
		if _, err := mockvendor.NewClient(u, nil, 0); err == nil {
			t.Errorf("NewClient(%q): no error", u)
		}
	}
	srv := mockvendortest.Start(t, mockvendor.Options{})
	c, err := mockvendor.NewClient(srv.URL+"/nothing", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// /nothing is a measured path: 404 in the OpenAI shape.
	if _, err := c.StatsWindow(t.Context(), time.Second); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("stats of a wrong URL: %v", err)
	}
	if err := c.Reset(t.Context()); err == nil {
		t.Error("reset of a wrong URL: no error")
	}
}
