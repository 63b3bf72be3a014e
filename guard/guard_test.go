package guard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/guarded"
	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// rig is a Transport on real Redis in front of a test vendor that counts
// its requests and checks that each arrives with a lease held.
type rig struct {
	t      *testing.T
	tr     *Transport
	probe  *semaphore.Semaphore
	vendor *httptest.Server
	hits   atomic.Int64
	// unheld counts vendor requests that arrived while no lease was held.
	unheld atomic.Int64

	mu     sync.Mutex
	bodies []string
	sleeps []time.Duration
}

func newRig(t *testing.T, opt Options, vendor http.HandlerFunc) *rig {
	t.Helper()
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	if opt.Rate.IsZero() {
		opt.Rate = limiter.Limit{Rate: 1000, Burst: 100, Period: time.Second}
	}
	if opt.BackoffBase == 0 {
		opt.BackoffBase, opt.BackoffMax = time.Millisecond, 5*time.Millisecond
	}
	if opt.CancelGrace == 0 {
		opt.CancelGrace = -1
	}
	tr, err := New(rdb, budget, opt)
	if err != nil {
		t.Fatal(err)
	}
	// The probe shares the budget, so it must agree on its size: a
	// semaphore of another size would serve the queue with its own.
	size := opt.Concurrency
	if size == 0 {
		size = guarded.DefaultConcurrency
	}
	probe, err := semaphore.New(rdb, budget, semaphore.Options{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, tr: tr, probe: probe}
	sleep := tr.t.Sleep
	tr.t.Sleep = func(ctx context.Context, d time.Duration) error {
		r.mu.Lock()
		r.sleeps = append(r.sleeps, d)
		r.mu.Unlock()
		if held := r.held(); held != 0 {
			t.Errorf("a backoff sleep ran with %d lease(s) held", held)
		}
		return sleep(ctx, d)
	}
	r.vendor = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		if r.held() == 0 {
			r.unheld.Add(1)
		}
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, string(b))
		r.mu.Unlock()
		vendor(w, req)
	}))
	t.Cleanup(func() {
		r.vendor.CloseClientConnections()
		r.vendor.Close()
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
		_ = probe.Close()
		if n := r.unheld.Load(); n > 0 {
			t.Errorf("the vendor received %d request(s) with no lease held", n)
		}
	})
	return r
}

// held is the number of leases held in Redis now.
func (r *rig) held() int {
	st, err := r.probe.State(context.Background())
	if err != nil {
		r.t.Errorf("state: %v", err)
		return -1
	}
	return int(st.Holders)
}

// waitHeld polls Redis (it has no signal) until want leases are held.
func (r *rig) waitHeld(want int) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.held() != want {
		if time.Now().After(deadline) {
			r.t.Fatalf("%d lease(s) held, want %d", r.held(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *rig) post(ctx context.Context, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.vendor.URL+"/v1/chat/completions", body)
	if err != nil {
		r.t.Fatal(err)
	}
	return r.tr.RoundTrip(req)
}

// statuses answers the given statuses in turn, then 200.
func statuses(codes ...int) http.HandlerFunc {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		if i < len(codes) {
			w.WriteHeader(codes[i])
			fmt.Fprintf(w, "status %d", codes[i])
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	}
}

// TestRetryRules: each answer of the vendor is retried, or not, by the
// rules, counted at the vendor; a retried status is returned as the last
// answer.
func TestRetryRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		codes  []int
		hits   int64
		status int
	}{
		{"500 retried", []int{500, 502}, 3, 200},
		{"503 on every attempt returns the last answer", []int{503, 503, 503}, 3, 503},
		{"408 retried", []int{408}, 2, 200},
		{"429 retried", []int{429}, 2, 200},
		{"400 not retried", []int{400}, 1, 400},
		{"401 not retried", []int{401}, 1, 401},
		{"404 not retried", []int{404}, 1, 404},
		{"200 at once", nil, 1, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, Options{MaxAttempts: 3}, statuses(tc.codes...))
			resp, err := r.post(context.Background(), strings.NewReader(`{"model":"m"}`))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != tc.status || r.hits.Load() != tc.hits {
				t.Errorf("status %d after %d vendor hits, want %d after %d", resp.StatusCode, r.hits.Load(), tc.status, tc.hits)
			}
			if tc.status != 200 && string(body) != fmt.Sprintf("status %d", tc.status) {
				t.Errorf("body %q: the vendor's answer is returned as it was", body)
			}
			for i, b := range r.bodies {
				if b != `{"model":"m"}` {
					t.Errorf("attempt %d sent body %q", i+1, b)
				}
			}
			r.waitHeld(0)
		})
	}
}

// TestRetryAfter: a 429's retry-after-ms and Retry-After set the least
// backoff.
func TestRetryAfter(t *testing.T) {
	for _, h := range [][2]string{{"Retry-After-Ms", "300"}, {"Retry-After", "1"}} {
		t.Run(h[0], func(t *testing.T) {
			t.Parallel()
			var n atomic.Int64
			r := newRig(t, Options{MaxAttempts: 2}, func(w http.ResponseWriter, _ *http.Request) {
				if n.Add(1) == 1 {
					w.Header().Set(h[0], h[1])
					w.WriteHeader(429)
				}
			})
			resp, err := r.post(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			want := 300 * time.Millisecond
			if h[0] == "Retry-After" {
				want = time.Second
			}
			if resp.StatusCode != 200 || len(r.sleeps) != 1 || r.sleeps[0] < want {
				t.Errorf("status %d, sleeps %v; want 200 after one sleep of at least %s", resp.StatusCode, r.sleeps, want)
			}
		})
	}
}

// TestLongRetryAfterIsNotSleptThrough: a caller with no deadline is not put
// to sleep for as long as a vendor asks (Retry-After may say hours): a wait
// longer than a whole call deadline ends the retries, and the caller gets
// the vendor's answer with its Retry-After.
func TestLongRetryAfterIsNotSleptThrough(t *testing.T) {
	t.Parallel()
	r := newRig(t, Options{MaxAttempts: 3}, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(429)
	})
	resp, err := r.post(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "3600" || r.hits.Load() != 1 || len(r.sleeps) != 0 {
		t.Errorf("status %d (Retry-After %q) after %d hits and sleeps %v; want the 429 at once, no sleep",
			resp.StatusCode, resp.Header.Get("Retry-After"), r.hits.Load(), r.sleeps)
	}
}

// TestNetworkErrorsAndCallDeadline: connections cut and calls past the call
// deadline are retried, then fail with a *VendorError.
func TestNetworkErrorsAndCallDeadline(t *testing.T) {
	t.Run("connection cut", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{MaxAttempts: 3}, func(w http.ResponseWriter, _ *http.Request) {
			c, _, _ := http.NewResponseController(w).Hijack()
			_ = c.Close()
		})
		_, err := r.post(context.Background(), strings.NewReader("x"))
		var ve *VendorError
		if !errors.As(err, &ve) || !errors.Is(err, ErrVendorFailed) || ve.Attempts != 3 || r.hits.Load() != 3 {
			t.Errorf("err %v after %d hits; want a VendorError after 3", err, r.hits.Load())
		}
		r.waitHeld(0)
	})
	t.Run("call deadline", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{MaxAttempts: 2, CallTimeout: 200 * time.Millisecond}, func(w http.ResponseWriter, req *http.Request) {
			<-req.Context().Done()
		})
		_, err := r.post(context.Background(), nil)
		if !errors.Is(err, ErrVendorFailed) || !errors.Is(err, ErrCallTimeout) || r.hits.Load() != 2 {
			t.Errorf("err %v after %d hits; want the call deadline after 2", err, r.hits.Load())
		}
		r.waitHeld(0)
	})
}

// TestNeverRetried: a queue timeout, a caller gone, and a request whose
// deadline leaves no room for another attempt are not retried.
func TestNeverRetried(t *testing.T) {
	t.Run("queue timeout", func(t *testing.T) {
		t.Parallel()
		r := fullRig(t)
		_, err := r.post(context.Background(), nil)
		if !errors.Is(err, ErrQueueTimeout) || !errors.Is(err, semaphore.ErrQueueTimeout) || r.hits.Load() != 0 || len(r.sleeps) != 0 {
			t.Errorf("err %v, %d hits, %d sleeps; want a queue timeout, no call, no retry", err, r.hits.Load(), len(r.sleeps))
		}
	})
	t.Run("caller gone", func(t *testing.T) {
		t.Parallel()
		arrived := make(chan struct{})
		r := newRig(t, Options{MaxAttempts: 3}, func(w http.ResponseWriter, req *http.Request) {
			close(arrived)
			<-req.Context().Done()
		})
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-arrived; cancel() }()
		_, err := r.post(ctx, nil)
		if !errors.Is(err, context.Canceled) || r.hits.Load() != 1 {
			t.Errorf("err %v after %d hits; want context.Canceled after 1", err, r.hits.Load())
		}
		r.waitHeld(0)
	})
	t.Run("deadline leaves no room", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{MaxAttempts: 3, CallTimeout: 5 * time.Second}, statuses(500, 500))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		resp, err := r.post(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 500 || r.hits.Load() != 1 {
			t.Errorf("status %d after %d hits; want the 500 after 1", resp.StatusCode, r.hits.Load())
		}
	})
}

// fullRig returns a rig of one slot, taken by the probe until the test
// ends, and a 100ms queue deadline: every call times out in the queue.
func fullRig(t *testing.T) *rig {
	t.Helper()
	r := newRig(t, Options{Concurrency: 1, QueueTimeout: 100 * time.Millisecond}, statuses())
	l, err := r.probeOne()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Release(context.Background()) })
	return r
}

func (r *rig) probeOne() (*semaphore.Lease, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.probe.Acquire(ctx)
}

// TestBodyWithoutGetBody: a body without GetBody is buffered and sent again
// on each attempt; one larger than MaxRequestBody is sent once.
func TestBodyWithoutGetBody(t *testing.T) {
	t.Run("buffered", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{MaxAttempts: 3}, statuses(500))
		resp, err := r.post(context.Background(), io.NopCloser(strings.NewReader("hello")))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || len(r.bodies) != 2 || r.bodies[0] != "hello" || r.bodies[1] != "hello" {
			t.Errorf("status %d, bodies %q", resp.StatusCode, r.bodies)
		}
	})
	t.Run("too large to buffer", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{MaxAttempts: 3, MaxRequestBody: 4}, statuses(500))
		resp, err := r.post(context.Background(), io.NopCloser(strings.NewReader("hello")))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != 500 || len(r.bodies) != 1 || r.bodies[0] != "hello" {
			t.Errorf("status %d, bodies %q; want the 500 of the one attempt", resp.StatusCode, r.bodies)
		}
	})
}

// sse streams n events, one per step, then data: [DONE].
func sse(n int, step <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for i := range n {
			select {
			case <-step:
			case <-req.Context().Done():
				return
			}
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}
}

// TestStreamLeaseLifetime: a stream holds its lease while open and
// releases it when read to the end, when closed, and, when the caller
// never closes it, at the call deadline.
func TestStreamLeaseLifetime(t *testing.T) {
	t.Run("read to the end", func(t *testing.T) {
		t.Parallel()
		step := make(chan struct{})
		r := newRig(t, Options{}, sse(2, step))
		resp, err := r.post(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if h := r.held(); h != 1 {
			t.Errorf("%d lease(s) held while the stream is open, want 1", h)
		}
		close(step)
		b, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.HasSuffix(b, []byte("data: [DONE]\n\n")) {
			t.Fatalf("stream %q, %v", b, err)
		}
		r.waitHeld(0) // released at the end, before Close
		_ = resp.Body.Close()
	})
	t.Run("closed early", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{CancelGrace: 50 * time.Millisecond}, sse(2, make(chan struct{})))
		resp, err := r.post(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if h := r.held(); h != 1 {
			t.Errorf("%d lease(s) held while the stream is open, want 1", h)
		}
		_ = resp.Body.Close()
		r.waitHeld(0)
	})
	t.Run("never closed", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{CallTimeout: 300 * time.Millisecond}, sse(2, make(chan struct{})))
		resp, err := r.post(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r.waitHeld(0) // nobody reads or closes the body: the call deadline releases it
		if time.Since(start) > 9*time.Second {
			t.Error("released late")
		}
		_, err = io.ReadAll(resp.Body)
		if err == nil {
			t.Error("a stream cut at the call deadline read to its end")
		}
	})
	t.Run("caller gone", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, Options{}, sse(2, make(chan struct{})))
		ctx, cancel := context.WithCancel(context.Background())
		resp, err := r.post(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		r.waitHeld(0)
		if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
			t.Errorf("read after cancel: %v", err)
		}
	})
}

// TestRedisDown: with Redis unreachable the call fails closed at once with
// ErrUnavailable, and the vendor never hears of it.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	tr, err := New(rdb, redistest.Budget(t), Options{QueueTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var hits atomic.Int64
	vendor := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer vendor.Close()
	req, _ := http.NewRequest(http.MethodGet, vendor.URL, nil)
	_, err = (&http.Client{Transport: tr}).Do(req)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrQueueTimeout) || hits.Load() != 0 {
		t.Errorf("err %v, %d vendor hits; want ErrUnavailable and none", err, hits.Load())
	}
	if err := tr.Check(context.Background()); err == nil {
		t.Error("Check passed with Redis down")
	}
}

// TestConcurrencyAtVendor: many callers at once, with cancellations; the
// vendor never sees more than Concurrency calls in flight.
func TestConcurrencyAtVendor(t *testing.T) {
	t.Parallel()
	var inflight, peak atomic.Int64
	// Calls are cancelled while at the vendor: the cancel grace (the
	// default) keeps their slots until the vendor has seen it.
	r := newRig(t, Options{Concurrency: 2, QueueTimeout: 20 * time.Second, CancelGrace: 250 * time.Millisecond}, func(w http.ResponseWriter, req *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-req.Context().Done():
		}
	})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if i%4 == 0 {
				time.AfterFunc(time.Duration(i)*time.Millisecond, cancel)
			}
			resp, err := r.post(ctx, strings.NewReader("x"))
			if err == nil {
				_ = resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Errorf("%d calls in flight at the vendor, limit 2", p)
	}
	r.waitHeld(0)
}

// TestOpenAISDKErrors: through openai-go (its retries off), a queue timeout
// still matches ErrQueueTimeout, and a vendor status after the last attempt
// is the SDK's *openai.Error with that status.
func TestOpenAISDKErrors(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	r := newRig(t, Options{Concurrency: 1, QueueTimeout: 100 * time.Millisecond, MaxAttempts: 2}, func(w http.ResponseWriter, _ *http.Request) {
		if fail.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"1","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}`)
	})
	client := openai.NewClient(option.WithBaseURL(r.vendor.URL+"/v1"), option.WithAPIKey("k"),
		option.WithHTTPClient(&http.Client{Transport: r.tr}), option.WithMaxRetries(0))
	params := openai.ChatCompletionNewParams{Model: "m", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
	if _, err := client.Chat.Completions.New(context.Background(), params); err != nil {
		t.Fatal(err)
	}

	l, err := r.probeOne()
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Chat.Completions.New(context.Background(), params)
	_ = l.Release(context.Background())
	if !errors.Is(err, ErrQueueTimeout) {
		t.Errorf("with the only slot taken: %v, want ErrQueueTimeout", err)
	}

	fail.Store(true)
	hits := r.hits.Load()
	_, err = client.Chat.Completions.New(context.Background(), params)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || r.hits.Load()-hits != 2 {
		t.Errorf("vendor 503 twice: %v after %d attempts; want an *openai.Error 503 after 2", err, r.hits.Load()-hits)
	}
}

// TestMetrics: the Transport's collector registers on its own and counts
// the admissions, attempts and retries of a request.
func TestMetrics(t *testing.T) {
	t.Parallel()
	r := newRig(t, Options{MaxAttempts: 3}, statuses(500))
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.tr.Metrics())
	resp, err := r.post(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	for metric, want := range map[string]float64{
		`sluice_admissions_total{outcome="admitted"}`: 2,
		`sluice_vendor_attempts_total{class="5xx"}`:   1,
		`sluice_vendor_attempts_total{class="2xx"}`:   1,
		`sluice_retries_total{reason="5xx"}`:          1,
		`sluice_vendor_inflight`:                      0,
	} {
		if got := gathered(t, reg, metric); got != want {
			t.Errorf("%s = %v, want %v", metric, got, want)
		}
	}
}

// gathered returns the value of one series, written as name{label="v"}.
func gathered(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	name, labels, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			if strings.Join(ls, ",") == labels {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// closeCounter is a request body that counts its closes.
type closeCounter struct {
	io.Reader
	closes atomic.Int64
}

func (c *closeCounter) Close() error { c.closes.Add(1); return nil }

// TestBodyClosedWhenNotSent: a request that never reaches the vendor (a
// queue timeout) still has its body closed, as a RoundTripper must.
func TestBodyClosedWhenNotSent(t *testing.T) {
	t.Parallel()
	r := fullRig(t)
	b := &closeCounter{Reader: strings.NewReader("x")}
	req, _ := http.NewRequest(http.MethodPost, r.vendor.URL, b)
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("x")), nil }
	if _, err := r.tr.RoundTrip(req); !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("%v", err)
	}
	if b.closes.Load() != 1 {
		t.Errorf("body closed %d times, want 1", b.closes.Load())
	}
}

// TestRedisFrozen: with Redis frozen (SIGSTOP, or a paused container) a
// call fails closed by its queue deadline, with an error an app answers
// 503 (ErrUnavailable or ErrQueueTimeout: a silent store cannot be told
// from a full budget), and the vendor never hears of it; once Redis is
// back, calls go through again.
func TestRedisFrozen(t *testing.T) {
	t.Parallel()
	srv := redistest.NewIsolated(t)
	rdb := srv.Client(t)
	rdb.Options().ContextTimeoutEnabled = true // as New's doc asks
	tr, err := New(rdb, redistest.Budget(t), Options{Rate: limiter.PerSecond(100), QueueTimeout: 500 * time.Millisecond, CancelGrace: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var hits atomic.Int64
	vendor := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer vendor.Close()
	get := func() (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, vendor.URL, nil)
		return tr.RoundTrip(req)
	}
	resp, err := get()
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()

	srv.Pause(t)
	start := time.Now()
	_, err = get()
	took := time.Since(start)
	srv.Unpause(t)
	if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrQueueTimeout) || hits.Load() != 1 {
		t.Errorf("Redis frozen: %v, %d vendor hits; want ErrUnavailable or ErrQueueTimeout and no new hit", err, hits.Load())
	}
	t.Logf("Redis frozen: %v after %s", err, took.Round(time.Millisecond))
	if took > 2*time.Second { // the queue deadline is 500ms: a wide margin for a busy machine
		t.Errorf("Redis frozen: the call failed after %s, past its 500ms queue deadline", took)
	}
	if took > 10*time.Second { // generous: the bound is the queue deadline plus the store's cleanup
		t.Errorf("failed after %s", took)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := get()
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis back, calls still fail: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // Redis reconnecting has no signal here
	}
}
