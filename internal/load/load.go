// Package load drives concurrent chat completions against one or more sluice
// gateways and checks the invariants where they count: at the vendor, when
// it is a mockvendor.
//
// Run starts Config.Clients clients, each sending one request at a time,
// round-robin over Config.URLs, until Config.Duration has passed or
// Config.Requests have started; requests in flight then finish (bounded by
// Config.Timeout). Each request is a small chat completion; a fraction
// Config.Cancel of them is cancelled by the client at a random moment
// before completion. Only the given URLs are contacted: no proxy from the
// environment, no redirects followed.
package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HeaderQueueWait is the response header in which a gateway may report how
// long the request waited before its vendor call started, in milliseconds
// ("12" or "12.5") or as a Go duration ("12ms").
const HeaderQueueWait = "X-Sluice-Queue-Wait"

// Defaults used where a Config field is zero.
const (
	DefaultClients  = 50
	DefaultDuration = 30 * time.Second
	DefaultTimeout  = 65 * time.Second
	DefaultModel    = "gpt-4o-mini"
)

// initialEstimate is the completion time assumed for cancellations before
// any request completed; low on purpose, so early cancellations do happen.
const initialEstimate = 10 * time.Millisecond

// Config configures Run. Zero fields take the documented defaults.
type Config struct {
	// URLs are the gateways' base URLs; /v1/chat/completions is appended.
	URLs []string
	// Clients is the number of concurrent clients. Zero: DefaultClients.
	Clients int
	// Duration stops starting requests after this long. Zero:
	// DefaultDuration, unless Requests is set.
	Duration time.Duration
	// Requests stops after this many requests have started. Zero: no count.
	Requests int
	// Stream asks for "stream": true and reads the SSE answer to [DONE].
	Stream bool
	// Key is sent as "Authorization: Bearer <Key>" when not empty.
	Key string
	// Model is the model asked for. Zero: DefaultModel.
	Model string
	// Cancel is the fraction of requests the client cancels, each at a
	// moment drawn uniformly from [0, E), E being a moving average of the
	// completion time so far, so nearly all of them end before completing.
	Cancel float64
	// Timeout bounds each request. Zero: DefaultTimeout (above the
	// gateway's 60s SLA, so the gateway's answer is seen).
	Timeout time.Duration
	// Progress receives a progress line once per ProgressInterval. Nil: none.
	Progress io.Writer
	// ProgressInterval is the period of progress lines. Zero: 1s.
	ProgressInterval time.Duration
	// Live rewrites a single progress line, for a terminal.
	Live bool
	// Vendor, when set, resets the vendor's statistics before the run and
	// checks the invariants against them after it.
	Vendor *VendorCheck
}

// Validate reports the first invalid field of c, if any.
func (c Config) Validate() error {
	if len(c.URLs) == 0 {
		return errors.New("load: no URL")
	}
	for _, s := range c.URLs {
		if _, err := baseURL(s); err != nil {
			return err
		}
	}
	if c.Vendor != nil {
		if _, err := baseURL(c.Vendor.StatsURL); err != nil {
			return err
		}
	}
	switch {
	case c.Clients < 0, c.Requests < 0, c.Duration < 0, c.Timeout < 0, c.ProgressInterval < 0:
		return errors.New("load: negative Clients, Requests, Duration, Timeout or ProgressInterval")
	case !(c.Cancel >= 0 && c.Cancel <= 1):
		return fmt.Errorf("load: Cancel %v is not a fraction in [0,1]", c.Cancel)
	}
	return nil
}

// baseURL checks an http(s) URL and drops its trailing slash.
func baseURL(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("load: %q is not an http(s) URL", s)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// withDefaults validates c and returns it with defaults filled in.
func (c Config) withDefaults() (Config, error) {
	if err := c.Validate(); err != nil {
		return c, err
	}
	urls := make([]string, len(c.URLs))
	for i, s := range c.URLs {
		urls[i], _ = baseURL(s)
	}
	c.URLs = urls
	if c.Clients == 0 {
		c.Clients = DefaultClients
	}
	if c.Duration == 0 && c.Requests == 0 {
		c.Duration = DefaultDuration
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Model == "" {
		c.Model = DefaultModel
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = time.Second
	}
	return c, nil
}

// Run performs a load run. It returns an error only when the run could not
// be made or checked (bad Config, vendor statistics unreachable); failed
// requests are counted in the Report. Cancelling ctx stops the run: no new
// requests, those in flight are abandoned and counted as aborted, and the
// report is marked Interrupted (vendor checks are still made).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:                 nil, // only the given URLs are contacted
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		MaxIdleConns:          cfg.Clients * (len(cfg.URLs) + 1),
		MaxIdleConnsPerHost:   cfg.Clients,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if cfg.Vendor != nil {
		if err := cfg.Vendor.reset(ctx, client); err != nil {
			return nil, err
		}
	}

	body, _ := json.Marshal(map[string]any{
		"model":      cfg.Model,
		"messages":   []map[string]string{{"role": "user", "content": "Say hello in five words."}},
		"max_tokens": 16,
		"stream":     cfg.Stream,
	})
	r := &runner{cfg: cfg, client: client, body: body, t: newTally()}
	start := time.Now()
	startCtx, stopStarting := context.WithCancel(ctx)
	defer stopStarting()
	if cfg.Duration > 0 {
		startCtx, stopStarting = context.WithTimeout(ctx, cfg.Duration)
		defer stopStarting()
	}
	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		r.progress(start, stopProgress)
	}()

	var wg sync.WaitGroup
	for range cfg.Clients {
		wg.Go(func() {
			for startCtx.Err() == nil {
				if cfg.Requests > 0 && r.started.Add(1) > int64(cfg.Requests) {
					return
				}
				r.one(ctx)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopProgress)
	<-progressDone

	rep := r.t.report()
	rep.URLs, rep.Clients, rep.Stream = cfg.URLs, cfg.Clients, cfg.Stream
	rep.Elapsed = elapsed
	rep.Interrupted = ctx.Err() != nil
	if cfg.Vendor != nil {
		// The run's own ctx may be cancelled; the checks still deserve an
		// answer, bounded by their own deadline.
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := cfg.Vendor.check(vctx, client, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// runner holds the state shared by the clients of one run.
type runner struct {
	cfg      Config
	client   *http.Client
	body     []byte
	t        *tally
	started  atomic.Int64 // requests started, when counted
	next     atomic.Uint64
	inFlight atomic.Int64
}

// one sends one request and tallies its outcome.
func (r *runner) one(ctx context.Context) {
	base := r.cfg.URLs[(r.next.Add(1)-1)%uint64(len(r.cfg.URLs))]
	reqCtx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	var cancelled atomic.Bool
	if r.cfg.Cancel > 0 && rand.Float64() < r.cfg.Cancel {
		timer := time.AfterFunc(rand.N(r.t.estimate()), func() {
			cancelled.Store(true)
			cancel()
		})
		defer timer.Stop()
	}
	req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(r.body))
	if err != nil {
		panic(err) // URLs were validated
	}
	req.Header.Set("Content-Type", "application/json")
	if r.cfg.Key != "" {
		req.Header.Set("Authorization", "Bearer "+r.cfg.Key)
	}
	if r.cfg.Stream {
		req.Header.Set("Accept", "text/event-stream")
	}

	r.inFlight.Add(1)
	defer r.inFlight.Add(-1)
	begin := time.Now()
	resp, err := r.client.Do(req)
	if err == nil {
		err = readAnswer(resp, r.cfg.Stream)
	}
	latency := time.Since(begin)
	switch {
	case err == nil:
		wait, hasWait := parseQueueWait(resp.Header.Get(HeaderQueueWait))
		r.t.completed(resp.StatusCode, latency, wait, hasWait)
	case cancelled.Load():
		r.t.count(&r.t.cancelled)
	case ctx.Err() != nil:
		r.t.count(&r.t.aborted)
	default:
		r.t.transportError(err)
	}
}

// readAnswer reads the whole answer. A 2xx answer must be well formed: JSON,
// or for a stream an SSE body that ends with "data: [DONE]".
func readAnswer(resp *http.Response, stream bool) error {
	defer resp.Body.Close()
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	if !ok || !stream || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if ok && !json.Valid(b) {
			return errors.New("2xx answer is not JSON")
		}
		return nil
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	done := false
	for sc.Scan() {
		if line := sc.Text(); line == "data: [DONE]" {
			done = true
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !done {
		return errors.New("stream ended without [DONE]")
	}
	return nil
}

// parseQueueWait parses HeaderQueueWait: milliseconds or a Go duration.
func parseQueueWait(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	if ms, err := strconv.ParseFloat(s, 64); err == nil && ms >= 0 {
		return time.Duration(ms * float64(time.Millisecond)), true
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, true
	}
	return 0, false
}

// tally collects the outcomes of a run; safe for concurrent use.
type tally struct {
	mu        sync.Mutex
	statuses  map[int]int
	cancelled int
	aborted   int
	transport int
	errs      map[string]int
	latencies []time.Duration
	waits     []time.Duration
	est       time.Duration // moving average of completion times
	finished  int
}

// maxErrKinds bounds the kinds of transport errors a report describes.
const maxErrKinds = 10

func newTally() *tally {
	return &tally{statuses: map[int]int{}, errs: map[string]int{}, est: initialEstimate}
}

func (t *tally) estimate() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return max(t.est, time.Millisecond)
}

func (t *tally) completed(status int, latency, wait time.Duration, hasWait bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finished++
	t.statuses[status]++
	t.latencies = append(t.latencies, latency)
	if hasWait {
		t.waits = append(t.waits, wait)
	}
	t.est += (latency - t.est) / 8
}

func (t *tally) count(n *int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finished++
	*n++
}

// transportError counts err under a short description; only the first
// maxErrKinds kinds are kept, the rest as "other".
func (t *tally) transportError(err error) {
	msg := describeError(err)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finished++
	t.transport++
	if _, seen := t.errs[msg]; !seen && len(t.errs) >= maxErrKinds {
		msg = "other"
	}
	t.errs[msg]++
}

// describeError drops the per-request parts (method, URL) of err.
func describeError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Op + ": " + oe.Err.Error()
	}
	return err.Error()
}

// progressSnapshot is what a progress line shows.
type progressSnapshot struct {
	finished, ok, cancelled, transport int
	others                             map[int]int
}

func (t *tally) progress() progressSnapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := progressSnapshot{finished: t.finished, cancelled: t.cancelled, transport: t.transport, others: map[int]int{}}
	for code, n := range t.statuses {
		if code >= 200 && code < 300 {
			p.ok += n
		} else {
			p.others[code] = n
		}
	}
	return p
}

// progress writes a line per interval until stop is closed.
func (r *runner) progress(start time.Time, stop <-chan struct{}) {
	w := r.cfg.Progress
	if w == nil {
		<-stop
		return
	}
	tick := time.NewTicker(r.cfg.ProgressInterval)
	defer tick.Stop()
	last, lastAt := 0, start
	for {
		select {
		case <-stop:
			if r.cfg.Live {
				fmt.Fprintln(w)
			}
			return
		case now := <-tick.C:
			p := r.t.progress()
			rate := float64(p.finished-last) / now.Sub(lastAt).Seconds()
			last, lastAt = p.finished, now
			var b strings.Builder
			fmt.Fprintf(&b, "%6.1fs  %7.1f req/s  in flight %d  ok %d", now.Sub(start).Seconds(), rate, r.inFlight.Load(), p.ok)
			for _, code := range sortedKeys(p.others) {
				fmt.Fprintf(&b, "  %d:%d", code, p.others[code])
			}
			if p.cancelled > 0 {
				fmt.Fprintf(&b, "  cancelled:%d", p.cancelled)
			}
			if p.transport > 0 {
				fmt.Fprintf(&b, "  transport:%d", p.transport)
			}
			if r.cfg.Live {
				fmt.Fprintf(w, "\r\x1b[K%s", b.String())
			} else {
				fmt.Fprintln(w, b.String())
			}
		}
	}
}

func (t *tally) report() *Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	rep := &Report{
		Statuses:        make(map[int]int, len(t.statuses)),
		Cancelled:       t.cancelled,
		Aborted:         t.aborted,
		TransportErrors: t.transport,
		Latency:         Summarize(t.latencies),
		QueueWait:       Summarize(t.waits),
	}
	for k, v := range t.statuses {
		rep.Statuses[k] = v
		rep.Requests += v
	}
	rep.Requests += t.cancelled + t.aborted + t.transport
	if len(t.errs) > 0 {
		rep.TransportErrorKinds = make(map[string]int, len(t.errs))
		for k, v := range t.errs {
			rep.TransportErrorKinds[k] = v
		}
	}
	return rep
}
