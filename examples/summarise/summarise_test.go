package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/guard"
	"github.com/sluicehq/sluice/internal/invariant"
	"github.com/sluicehq/sluice/internal/load"
	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// The budget the three replicas share.
const (
	rateR       = 20 // R, vendor calls per second
	burstB      = 3  // B
	concC       = 3  // C
	maxAttempts = 3
	replicas    = 3
	clients     = 24 // well above what the budget serves at once
	loadFor     = 4 * time.Second
)

// TestThreeReplicas runs three replicas of the app, each with its own Redis
// client and guard Transport, against one Redis and a mock vendor that
// enforces the budget, under demand above it with a quarter of the requests
// cancelled by their clients, and checks the invariants at the vendor as
// the gateway's end-to-end test does.
func TestThreeReplicas(t *testing.T) {
	srv := redistest.New(t)
	budget := redistest.Budget(t)
	vendor := mockvendortest.Start(t, mockvendor.Options{
		LatencyMin: 50 * time.Millisecond, LatencyMax: 100 * time.Millisecond,
		ErrorRate: 0.05, // some attempts are retried
		APIKey:    "vendor-key",
		Limit:     mockvendor.Limit{Concurrency: concC, Rate: rateR, Burst: burstB, Jitter: 50 * time.Millisecond},
	})
	var urls []string
	for range replicas {
		a, err := newApp(srv.Client(t), config{
			VendorURL: vendor.URL + "/v1", VendorKey: "vendor-key", Budget: budget, Model: "gpt-test", SLA: 15 * time.Second,
			Guard: guard.Options{Rate: limiter.Limit{Rate: rateR, Burst: burstB, Period: time.Second}, Concurrency: concC,
				QueueTimeout: 2 * time.Second, CallTimeout: 5 * time.Second, MaxAttempts: maxAttempts,
				BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
		})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(a.echo)
		t.Cleanup(func() { hs.Close(); _ = a.Close() })
		urls = append(urls, hs.URL)
	}
	stats, err := mockvendor.NewClient(vendor.URL+"/stats", http.DefaultClient, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	vendor.Reset()

	run := &load.Report{URLs: urls, Clients: clients, Statuses: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Go(func() {
			for n := 0; time.Since(start) < loadFor; n++ {
				url := urls[(i+n)%len(urls)]
				status, body, cancelled, err := send(url, rand.Float64() < 0.25)
				mu.Lock()
				run.Requests++
				switch {
				case cancelled:
					run.Cancelled++
				case err != nil:
					run.TransportErrors++
					t.Errorf("transport error: %v", err)
				default:
					run.Statuses[status]++
					if why := wellFormed(status, body); why != "" {
						run.Malformed++
						t.Errorf("malformed %d answer: %s: %s", status, why, body)
					}
				}
				mu.Unlock()
				if status != http.StatusOK {
					time.Sleep(50 * time.Millisecond) // a polite client: no busy loop on 503
				}
			}
		})
	}
	wg.Wait()
	run.Elapsed = time.Since(start)

	// I3: no lease is left once every request has ended (a cancelled call
	// holds its slot through the cancel grace, then releases it).
	probe, err := semaphore.New(srv.Client(t), budget, semaphore.Options{Size: concC})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, err := probe.State(context.Background())
		if err == nil && st.Holders == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("I3: leases still held: %+v, %v", st, err)
		}
		time.Sleep(20 * time.Millisecond) // Redis has no signal for it
	}

	vs, err := stats.StatsWindow(context.Background(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	run.Vendor = vs
	checks := load.Checks(load.VendorCheck{Concurrency: concC, Rate: rateR, Burst: burstB, Window: time.Second}, vs, run)
	for _, c := range checks {
		t.Logf("%-28s %-4s got %.1f limit %.1f (%s)", c.Name, c.Result, c.Got, c.Limit, c.Detail)
		if c.Result == load.Fail {
			t.Errorf("%s failed: got %.1f, limit %.1f", c.Name, c.Got, c.Limit)
		}
	}
	// I6: never more vendor attempts than the retry policy allows.
	if vs.Arrivals > int64(run.Requests*maxAttempts) {
		t.Errorf("I6: %d vendor arrivals for %d requests of at most %d attempts", vs.Arrivals, run.Requests, maxAttempts)
	}
	if run.Statuses[http.StatusOK] == 0 || vs.ByStatus[http.StatusOK] < int64(run.Statuses[http.StatusOK]) {
		t.Errorf("%d answers 200, the vendor answered %d", run.Statuses[http.StatusOK], vs.ByStatus[http.StatusOK])
	}
	t.Logf("%d requests (%d cancelled), statuses %v; vendor: %d arrivals, by status %v, max in flight %d, max in 1s %d",
		run.Requests, run.Cancelled, run.Statuses, vs.Arrivals, vs.ByStatus, vs.MaxInFlight, vs.MaxInWindow)
}

// send posts one text to summarise; with cancel, the client gives up at a
// random moment within the vendor's latency.
func send(url string, cancel bool) (status int, body []byte, cancelled bool, err error) {
	ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	if cancel {
		var cancelNow context.CancelFunc
		ctx, cancelNow = context.WithCancel(ctx)
		t := time.AfterFunc(rand.N(150*time.Millisecond), cancelNow)
		defer t.Stop()
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/summarise", bytes.NewReader([]byte(`{"text":"a long text to summarise"}`)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, ctx.Err() != nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, ctx.Err() != nil, err
	}
	return resp.StatusCode, body, false, nil
}

// wellFormed says what is wrong with an answer of the app (I4): a 200 is a
// summary, anything else an error in the OpenAI shape, and never a 500.
func wellFormed(status int, body []byte) string {
	if status == http.StatusOK {
		var s summariseResponse
		if json.Unmarshal(body, &s) != nil || s.Summary == "" {
			return "not a summary"
		}
		return ""
	}
	if status == http.StatusInternalServerError {
		return "a 500"
	}
	_, malformed := invariant.Answer(status, body)
	return malformed
}
