package load

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

const ms = time.Millisecond

// completion is a minimal well-formed chat completion.
const completion = `{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}`

func TestSummarize(t *testing.T) {
	seq := func(n int) []time.Duration {
		var ds []time.Duration
		for i := n; i >= 1; i-- { // descending: Summarize must sort
			ds = append(ds, time.Duration(i)*ms)
		}
		return ds
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		want *Percentiles
	}{
		{"none", nil, nil},
		{"one", []time.Duration{7 * ms}, &Percentiles{1, 7 * ms, 7 * ms, 7 * ms, 7 * ms}},
		{"two", []time.Duration{2 * ms, 1 * ms}, &Percentiles{2, 1 * ms, 2 * ms, 2 * ms, 2 * ms}},
		{"ten", seq(10), &Percentiles{10, 5 * ms, 9 * ms, 10 * ms, 10 * ms}},
		{"hundred", seq(100), &Percentiles{100, 50 * ms, 90 * ms, 99 * ms, 100 * ms}},
		{"thousand", seq(1000), &Percentiles{1000, 500 * ms, 900 * ms, 990 * ms, 1000 * ms}},
		{"one outlier", append(slices.Repeat([]time.Duration{ms}, 99), time.Second), &Percentiles{100, ms, ms, ms, time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			got := Summarize(in)
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if !slices.Equal(in, tc.in) {
				t.Error("Summarize modified its input")
			}
		})
	}
}

func TestParseQueueWait(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"12", 12 * ms, true},
		{"12.5", 12500 * time.Microsecond, true},
		{"0", 0, true},
		{"250ms", 250 * ms, true},
		{"1.5s", 1500 * ms, true},
		{"-3", 0, false},
		{"-3ms", 0, false},
		{"soon", 0, false},
	} {
		if got, ok := parseQueueWait(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("parseQueueWait(%q) = %v, %v", tc.in, got, ok)
		}
	}
}

// sum checks that the outcomes of rep add up to its requests.
func sum(t *testing.T, rep *Report) {
	t.Helper()
	n := rep.Cancelled + rep.Aborted + rep.TransportErrors
	for _, c := range rep.Statuses {
		n += c
	}
	if n != rep.Requests {
		t.Errorf("outcomes add up to %d, requests %d", n, rep.Requests)
	}
	if rep.Latency != nil && rep.Latency.N != n-rep.Cancelled-rep.Aborted-rep.TransportErrors {
		t.Errorf("latency n %d for %d answers", rep.Latency.N, n)
	}
}

func TestRunCountsAndCancellations(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{APIKey: "k", LatencyMin: 20 * ms, LatencyMax: 30 * ms})
	rep, err := Run(t.Context(), Config{
		URLs: []string{srv.URL}, Clients: 10, Requests: 400, Cancel: 0.3, Key: "k",
		Vendor: &VendorCheck{StatsURL: srv.URL + "/stats"},
	})
	if err != nil {
		t.Fatal(err)
	}
	sum(t, rep)
	if rep.Requests != 400 || rep.TransportErrors != 0 || rep.Aborted != 0 || rep.Interrupted {
		t.Fatalf("report %+v", rep)
	}
	// Binomial(400, 0.3) has a standard deviation of 9.2; some requests
	// complete before their cancel moment.
	if rep.Cancelled < 75 || rep.Cancelled > 150 {
		t.Errorf("cancelled %d of 400, want about 120", rep.Cancelled)
	}
	if rep.Latency.P50 < 20*ms || rep.Latency.Max > 5*time.Second || rep.QueueWait != nil {
		t.Errorf("latency %+v queue wait %+v", rep.Latency, rep.QueueWait)
	}
	// The vendor saw each completed request, and at most the others.
	v := rep.Vendor
	if v == nil || v.ByStatus[200] < int64(rep.Statuses[200]) || v.Arrivals > 400 || v.Arrivals < int64(rep.Statuses[200]) {
		t.Errorf("vendor %+v vs %v", v, rep.Statuses)
	}
	// Not checked: v.MaxInFlight <= 10. A client that cancels starts its
	// next request at once, and that one can arrive before the vendor has
	// noticed the cancelled one's closed connection.
}

func TestRunDurationStream(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{LatencyMax: 5 * ms, StreamChunks: 3, StreamInterval: ms, StreamCutRate: 0.3, ErrorRate: 0.1})
	var progress bytes.Buffer
	start := time.Now()
	rep, err := Run(t.Context(), Config{
		URLs: []string{srv.URL, srv.URL + "/"}, Clients: 4, Duration: 300 * ms, Stream: true,
		Progress: &progress, ProgressInterval: 50 * ms,
	})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*ms || took > 5*time.Second {
		t.Errorf("run took %v for a 300ms duration", took)
	}
	sum(t, rep)
	s := srv.Stats()
	if rep.Requests == 0 || int64(rep.Requests) != s.Arrivals || int64(rep.TransportErrors) != s.StreamCuts ||
		int64(rep.Statuses[500]) != s.ByStatus[500] || int64(rep.Statuses[200])+s.StreamCuts != s.ByStatus[200] {
		t.Errorf("report %+v vs vendor %+v", rep, s)
	}
	if rep.TransportErrors > 0 && rep.TransportErrorKinds["unexpected EOF"] != rep.TransportErrors {
		t.Errorf("transport errors %v", rep.TransportErrorKinds)
	}
	if lines := strings.Count(progress.String(), "req/s"); lines < 1 || strings.Contains(progress.String(), "\r") {
		t.Errorf("progress:\n%s", progress.String())
	}
}

func TestQueueWaitAndNoRedirects(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	var n atomic.Int64
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch i := n.Add(1); {
		case i%4 == 0:
			http.Redirect(w, r, other.URL+"/v1/chat/completions", http.StatusTemporaryRedirect)
		case i%2 == 0:
			w.Header().Set(HeaderQueueWait, "20ms")
			w.Write([]byte(completion))
		default:
			w.Header().Set(HeaderQueueWait, "10")
			w.Write([]byte(completion))
		}
	}))
	defer gw.Close()
	rep, err := Run(t.Context(), Config{URLs: []string{gw.URL}, Clients: 1, Requests: 8})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Statuses[307] != 2 || rep.Statuses[200] != 6 || elsewhere.Load() != 0 {
		t.Errorf("statuses %v, elsewhere %d", rep.Statuses, elsewhere.Load())
	}
	if q := rep.QueueWait; q == nil || q.N != 6 || q.P50 != 10*ms || q.Max != 20*ms {
		t.Errorf("queue wait %+v", q)
	}
}

func TestRunInterrupted(t *testing.T) {
	arrived := make(chan struct{}, 3)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // then the server watches for the client going away
		arrived <- struct{}{}
		<-r.Context().Done()
	}))
	defer gw.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan *Report)
	go func() {
		rep, _ := Run(ctx, Config{URLs: []string{gw.URL}, Clients: 3, Duration: time.Hour})
		done <- rep
	}()
	for range 3 {
		<-arrived
	}
	cancel()
	rep := <-done
	if !rep.Interrupted || rep.Aborted != 3 || rep.Requests != 3 {
		t.Errorf("report %+v", rep)
	}
}

func TestVendorChecks(t *testing.T) {
	limit := mockvendor.Limit{Concurrency: 2, Rate: 1000, Burst: 10}
	t.Run("too many clients", func(t *testing.T) {
		srv := mockvendortest.Start(t, mockvendor.Options{StreamInterval: 20 * ms, Limit: limit})
		rep, err := Run(t.Context(), Config{URLs: []string{srv.URL}, Clients: 6, Requests: 30, Stream: true,
			Vendor: &VendorCheck{StatsURL: srv.URL + "/stats"}})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Failed() || result(rep, "I1 max in flight") != Fail || result(rep, "vendor limit violations") != Fail {
			t.Errorf("checks %+v", rep.Checks)
		}
	})
	t.Run("within the limit", func(t *testing.T) {
		srv := mockvendortest.Start(t, mockvendor.Options{LatencyMin: 2 * ms, Limit: limit})
		rep, err := Run(t.Context(), Config{URLs: []string{srv.URL}, Clients: 1, Requests: 20,
			Vendor: &VendorCheck{StatsURL: srv.URL + "/stats", Window: 100 * ms}})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Failed() || result(rep, "I1 max in flight") != Pass || result(rep, "I2 max arrivals in 100ms") != Pass ||
			result(rep, "I5 vendor 2xx vs budget") != Info {
			t.Errorf("checks %+v", rep.Checks)
		}
		var text bytes.Buffer
		rep.WriteText(&text)
		for _, want := range []string{"20 requests", "PASS  I1 max in flight", "1 <= 2", "B + R*W = 10 + 1000/s * 100ms", "vendor: 20 arrivals"} {
			if !strings.Contains(text.String(), want) {
				t.Errorf("text lacks %q:\n%s", want, text.String())
			}
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		srv := mockvendortest.Start(t, mockvendor.Options{})
		if _, err := Run(t.Context(), Config{URLs: []string{srv.URL}, Requests: 1, Vendor: &VendorCheck{StatsURL: srv.URL + "/nope"}}); err == nil {
			t.Error("no error for a vendor without stats")
		}
	})
}

func result(rep *Report, name string) string {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c.Result
		}
	}
	return "missing"
}

func TestChecks(t *testing.T) {
	vs := &mockvendor.Report{MaxInFlight: 3, MaxInWindow: 16, Window: "1s", WindowSeconds: 1, ByStatus: map[int]int64{200: 50}, MeanOKLatencyMS: 100}
	run := &Report{Elapsed: 10 * time.Second, Statuses: map[int]int{200: 50, 503: 9}}
	for _, tc := range []struct {
		name string
		v    VendorCheck
		lim  *mockvendor.LimitReport
		want map[string]string
	}{
		{"nothing known", VendorCheck{}, nil, map[string]string{"I1 max in flight": Skip, "I2 max arrivals in 1s": Skip, "I4 500s and transport errors": Pass}},
		{"from flags", VendorCheck{Concurrency: 3, Rate: 10, Burst: 5}, nil, map[string]string{"I1 max in flight": Pass, "I2 max arrivals in 1s": Fail, "I5 vendor 2xx vs budget": Info}},
		{"burst 6 fits", VendorCheck{Concurrency: 3, Rate: 600, Period: time.Minute, Burst: 6}, nil, map[string]string{"I2 max arrivals in 1s": Pass}},
		{"from the vendor", VendorCheck{}, &mockvendor.LimitReport{Concurrency: 2, Rate: 10, PeriodSeconds: 1, Burst: 6}, map[string]string{"I1 max in flight": Fail, "I2 max arrivals in 1s": Pass, "vendor limit violations": Pass}},
		{"flags win", VendorCheck{Concurrency: 4}, &mockvendor.LimitReport{Concurrency: 2}, map[string]string{"I1 max in flight": Pass}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs := *vs
			vs.Limit = tc.lim
			rep := *run
			rep.Checks = Checks(tc.v, &vs, run)
			for name, want := range tc.want {
				if got := result(&rep, name); got != want {
					t.Errorf("%s: %s, want %s (%+v)", name, got, want, rep.Checks)
				}
			}
		})
	}
	// I5: budget = min(B + R*T, C*T/latency) = min(5+10*10, 3*10/0.1) = 105.
	checks := Checks(VendorCheck{Concurrency: 3, Rate: 10, Burst: 5}, vs, run)
	if c := checks[len(checks)-1]; c.Got != 50 || c.Limit != 105 {
		t.Errorf("I5 %+v", c)
	}
}

func TestReportJSON(t *testing.T) {
	rep := &Report{URLs: []string{"http://a"}, Elapsed: 2 * time.Second, Requests: 4, Statuses: map[int]int{200: 3}, Cancelled: 1,
		Latency: &Percentiles{3, 10 * ms, 20 * ms, 30 * ms, 30 * ms}, Checks: []Check{{Name: "I1", Result: Fail}}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	json.Unmarshal(b, &doc)
	if doc["requests_per_second"] != 2.0 || doc["failed"] != true || doc["latency"].(map[string]any)["p90_ms"] != 20.0 ||
		doc["statuses"].(map[string]any)["200"] != 3.0 {
		t.Errorf("json %s", b)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{},
		{URLs: []string{"localhost:8080"}},
		{URLs: []string{"ftp://x"}},
		{URLs: []string{"http://x"}, Cancel: 1.5},
		{URLs: []string{"http://x"}, Clients: -1},
	} {
		if _, err := Run(t.Context(), c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
