package guarded

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	s := &Transport{cfg: Config{BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second}}
	for attempt, ceiling := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 5: time.Second, 60: time.Second} {
		var most time.Duration
		for range 200 {
			d := s.backoff(attempt, 0)
			if d < 0 || d > ceiling {
				t.Fatalf("attempt %d: %s outside [0, %s]", attempt, d, ceiling)
			}
			most = max(most, d)
		}
		if most < ceiling/2 {
			t.Errorf("attempt %d: never above %s: not full jitter up to %s", attempt, most, ceiling)
		}
	}
	if d := s.backoff(1, 3*time.Second); d != 3*time.Second {
		t.Errorf("vendor wait ignored: %s", d)
	}
}

func TestRetryAfter(t *testing.T) {
	for _, c := range []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{}, 0},
		{http.Header{"Retry-After": {"3"}}, 3 * time.Second},
		{http.Header{"Retry-After": {"-1"}}, 0},
		{http.Header{"Retry-After": {"junk"}}, 0},
		{http.Header{"Retry-After": {"NaN"}}, 0},
		{http.Header{"Retry-After": {"1e300"}}, 24 * time.Hour},
		{http.Header{"Retry-After-Ms": {"250"}, "Retry-After": {"9"}}, 250 * time.Millisecond},
		{http.Header{"Retry-After": {"Mon, 02 Jan 2006 15:04:05 GMT"}}, 0},
	} {
		if got := RetryAfter(c.h); got != c.want {
			t.Errorf("%v: %s, want %s", c.h, got, c.want)
		}
	}
}

// fakeAdmitter admits at once; each lease's context can be ended by the
// test, as when the lease expires under a call.
type fakeAdmitter struct{ leases chan *fakeLease }

func (a *fakeAdmitter) Acquire(context.Context) (Lease, error) {
	l := &fakeLease{}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	a.leases <- l
	return l, nil
}
func (a *fakeAdmitter) Check(context.Context) error { return nil }
func (a *fakeAdmitter) Close() error                { return nil }

type fakeLease struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (l *fakeLease) Context() context.Context      { return l.ctx }
func (l *fakeLease) Held() bool                    { return l.ctx.Err() == nil }
func (l *fakeLease) Release(context.Context) error { l.cancel(); return nil }

// TestLeaseLostCancelsTheCall: when the lease ends under a call, the call
// is cancelled at the vendor at once and retried on a new lease.
func TestLeaseLostCancelsTheCall(t *testing.T) {
	adm := &fakeAdmitter{leases: make(chan *fakeLease, 10)}
	var hits atomic.Int64
	vendor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			(<-adm.leases).cancel() // the first lease is lost mid-call
			<-r.Context().Done()    // the call is cut: the vendor sees it go
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer vendor.Close()
	tr := New(Config{BackoffBase: time.Millisecond, BackoffMax: time.Millisecond, CancelGrace: -1}, adm, nil, nil)
	defer tr.Close()
	req, _ := http.NewRequest(http.MethodGet, vendor.URL, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || hits.Load() != 2 {
		t.Errorf("status %d after %d vendor hits; want 200 after 2", resp.StatusCode, hits.Load())
	}
}
