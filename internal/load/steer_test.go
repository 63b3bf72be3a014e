package load

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

// TestLoadSteered drives a Load by hand as the end-to-end tests do: two
// named targets, one taken out of rotation midway, a request of the
// test's own with a header, and every request leaving one record.
func TestLoadSteered(t *testing.T) {
	a := mockvendortest.Start(t, mockvendor.Options{LatencyMin: 2 * ms})
	b := mockvendortest.Start(t, mockvendor.Options{LatencyMin: 2 * ms})
	l, err := New(Config{URLs: []string{a.URL, b.URL}, Names: []string{"a", "b"}, Clients: 4, Backoff: 10 * ms})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Start(context.Background())
	waitFor(t, func() bool { return Count(l.Records(), func(r Record) bool { return r.Target == "b" }) >= 5 })
	l.Disable("b")
	cut := time.Now()
	own := l.Send(t.Context(), b.URL, http.Header{mockvendor.HeaderStatus: {"503"}})
	waitFor(t, func() bool {
		return Count(l.Records(), func(r Record) bool { return r.Target == "a" && r.Start.After(cut) }) >= 5
	})
	recs := l.Stop()
	if own.Target != "b" || own.Status != 503 || own.Err != "" || Normal(own) == "" {
		t.Errorf("own request: %s (normal: %q)", own, Normal(own))
	}
	for _, r := range recs {
		if r.Target == "b" && r.Start.After(cut) {
			t.Errorf("sent to a disabled target: %s", r)
		}
		if why := Normal(r); why != "" {
			t.Errorf("%s: %s", r, why)
		}
	}
	if got := int64(len(recs)) + 1; got != a.Stats().Arrivals+b.Stats().Arrivals {
		t.Errorf("%d records and the own request, vendors saw %d + %d", got-1, a.Stats().Arrivals, b.Stats().Arrivals)
	}
	if s := Summary(recs); !strings.Contains(s, "a{200: ") || !strings.Contains(s, "b{200: ") {
		t.Errorf("summary %q", s)
	}
	if r := l.Send(t.Context(), "nobody", nil); r.Err == "" {
		t.Errorf("unknown target: %s", r)
	}
	if l.Stop() == nil {
		t.Error("a second Stop lost the records")
	}
}

func TestRecordsInReport(t *testing.T) {
	srv := mockvendortest.Start(t, mockvendor.Options{ErrorRate: 0.5})
	rep, err := Run(t.Context(), Config{URLs: []string{srv.URL}, Clients: 2, Requests: 40})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Records) != 40 || Count(rep.Records, func(r Record) bool { return r.Status == 500 }) != rep.Statuses[500] {
		t.Errorf("%d records, statuses %v", len(rep.Records), rep.Statuses)
	}
	if rep.Malformed != 0 {
		t.Errorf("malformed %d: the vendor's errors are in the OpenAI shape", rep.Malformed)
	}
}

func TestStopUnstarted(t *testing.T) {
	l, err := New(Config{URLs: []string{"http://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if recs := l.Stop(); len(recs) != 0 {
		t.Errorf("records %v", recs)
	}
}

// waitFor polls cond every 5ms for up to 10s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * ms)
	}
}
