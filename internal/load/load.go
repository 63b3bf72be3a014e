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
// environment, no redirects followed. Every request leaves a Record; the
// Report summarises them, and Plot draws them with the vendor's view.
//
// Tests that steer the load as it runs (take a gateway out of rotation, send
// one request of their own) use New, Start and Stop instead of Run.
package load

import (
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
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
	// Names name the URLs in records and logs, one per URL. Empty: the
	// URLs themselves.
	Names []string
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
	// Backoff is a client's pause after an answer other than 200, or none,
	// as polite clients make (a queue timeout must not become a busy
	// loop). Zero: none.
	Backoff time.Duration
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
	if len(c.Names) > 0 && len(c.Names) != len(c.URLs) {
		return fmt.Errorf("load: %d names for %d URLs", len(c.Names), len(c.URLs))
	}
	if c.Vendor != nil {
		if _, err := baseURL(c.Vendor.StatsURL); err != nil {
			return err
		}
	}
	switch {
	case c.Clients < 0, c.Requests < 0, c.Duration < 0, c.Timeout < 0, c.ProgressInterval < 0, c.Backoff < 0:
		return errors.New("load: negative Clients, Requests, Duration, Timeout, ProgressInterval or Backoff")
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
	if len(c.Names) == 0 {
		c.Names = urls
	}
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
	l, err := New(cfg)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	cfg = l.cfg
	var vendor *mockvendor.Client
	if cfg.Vendor != nil {
		if vendor, err = mockvendor.NewClient(cfg.Vendor.StatsURL, l.client, 10*time.Second); err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
		if err := vendor.Reset(ctx); err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
	}

	start := time.Now()
	l.Start(ctx)
	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		l.progress(start, stopProgress)
	}()
	var timeUp <-chan time.Time
	if cfg.Duration > 0 {
		timer := time.NewTimer(cfg.Duration)
		defer timer.Stop()
		timeUp = timer.C
	}
	select {
	case <-timeUp:
	case <-l.Done():
	case <-ctx.Done():
	}
	recs := l.Stop()
	elapsed := time.Since(start)
	close(stopProgress)
	<-progressDone

	rep := newReport(recs)
	rep.URLs, rep.Clients, rep.Stream = cfg.URLs, cfg.Clients, cfg.Stream
	rep.Elapsed = elapsed
	rep.Interrupted = ctx.Err() != nil
	if cfg.Vendor != nil {
		// The run's own ctx may be cancelled; the checks still deserve an
		// answer, bounded by their own deadline.
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := cfg.Vendor.check(vctx, vendor, rep); err != nil {
			return rep, fmt.Errorf("load: %w", err)
		}
	}
	return rep, nil
}

// Load is a set of clients, each sending one request at a time to the
// targets in turn (skipping disabled ones, as a load balancer would), from
// Start until Stop, Config.Requests or Config.Duration. It is safe for
// concurrent use.
type Load struct {
	cfg    Config
	client *http.Client
	body   []byte

	off      []atomic.Bool // per target: out of rotation
	next     atomic.Uint64
	started  atomic.Int64 // requests started, when counted
	inFlight atomic.Int64

	startOnce sync.Once
	stop      context.CancelFunc // stops starting requests
	wg        sync.WaitGroup
	done      chan struct{} // closed once every client has returned

	mu   sync.Mutex
	recs []Record
	est  time.Duration // moving average of completion times
}

// New returns a Load for cfg, not started. Close it when done.
func New(cfg Config) (*Load, error) {
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
	body, _ := json.Marshal(map[string]any{
		"model":      cfg.Model,
		"messages":   []map[string]string{{"role": "user", "content": "Say hello in five words."}},
		"max_tokens": 16,
		"stream":     cfg.Stream,
	})
	return &Load{
		cfg: cfg,
		client: &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		body: body,
		off:  make([]atomic.Bool, len(cfg.URLs)),
		stop: func() {},
		done: make(chan struct{}),
		est:  initialEstimate,
	}, nil
}

// Start starts the clients; it does nothing when called again. ctx bounds
// the requests themselves: when it ends, no request starts and those in
// flight are abandoned (Record.Aborted). To let them finish, pass a ctx
// that outlives Stop.
func (l *Load) Start(ctx context.Context) {
	l.startOnce.Do(func() {
		var startCtx context.Context
		startCtx, l.stop = context.WithCancel(ctx)
		for range l.cfg.Clients {
			l.wg.Go(func() { l.client1(ctx, startCtx) })
		}
		go func() {
			l.wg.Wait()
			close(l.done)
		}()
	})
}

// client1 is one client: a request at a time until startCtx ends, the
// count is reached or every target is disabled.
func (l *Load) client1(ctx, startCtx context.Context) {
	for startCtx.Err() == nil {
		if l.cfg.Requests > 0 && l.started.Add(1) > int64(l.cfg.Requests) {
			return
		}
		i := l.pick()
		if i < 0 {
			return
		}
		r := l.send(ctx, i, l.cfg.Cancel > 0 && rand.Float64() < l.cfg.Cancel, nil)
		l.mu.Lock()
		l.recs = append(l.recs, r)
		if r.Answered() {
			l.est += (r.Latency() - l.est) / 8
		}
		l.mu.Unlock()
		if l.cfg.Backoff > 0 && r.Status != http.StatusOK && !r.Cancelled {
			select {
			case <-startCtx.Done():
			case <-time.After(l.cfg.Backoff):
			}
		}
	}
}

// pick returns the next target that is not disabled, or -1.
func (l *Load) pick() int {
	for range len(l.off) {
		i := int(l.next.Add(1)-1) % len(l.off)
		if !l.off[i].Load() {
			return i
		}
	}
	return -1
}

// Disable takes the target (a name of Config.Names, or a URL) out of
// rotation: no new request goes to it. Enable puts it back.
func (l *Load) Disable(target string) { l.set(target, true) }

// Enable puts a target taken out by Disable back into rotation.
func (l *Load) Enable(target string) { l.set(target, false) }

func (l *Load) set(target string, off bool) {
	if i := l.index(target); i >= 0 {
		l.off[i].Store(off)
	}
}

// index returns the position of target (a name or a URL), or -1.
func (l *Load) index(target string) int {
	if i := slices.Index(l.cfg.Names, target); i >= 0 {
		return i
	}
	u, _ := baseURL(target)
	return slices.Index(l.cfg.URLs, u)
}

// Send sends one request of its own to target (a name of Config.Names, or
// a URL) with the extra headers h (may be nil), and returns its record. It
// is not one of the load's records and is never cancelled on purpose; ctx
// bounds it together with Config.Timeout.
func (l *Load) Send(ctx context.Context, target string, h http.Header) Record {
	i := l.index(target)
	if i < 0 {
		now := time.Now()
		return Record{Target: target, Start: now, End: now, Err: "load: unknown target " + target}
	}
	return l.send(ctx, i, false, h)
}

// send sends one chat completion to target i and records it.
func (l *Load) send(ctx context.Context, i int, cancelIt bool, h http.Header) Record {
	rec := Record{Target: l.cfg.Names[i], Start: time.Now()}
	reqCtx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	var cancelled atomic.Bool
	if cancelIt {
		timer := time.AfterFunc(rand.N(l.estimate()), func() {
			cancelled.Store(true)
			cancel()
		})
		defer timer.Stop()
	}
	req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, l.cfg.URLs[i]+"/v1/chat/completions", bytes.NewReader(l.body))
	if err != nil {
		panic(err) // URLs were validated
	}
	req.Header.Set("Content-Type", "application/json")
	if l.cfg.Key != "" {
		req.Header.Set("Authorization", "Bearer "+l.cfg.Key)
	}
	if l.cfg.Stream {
		req.Header.Set("Accept", "text/event-stream")
	}
	for k, v := range h {
		req.Header[k] = v
	}

	l.inFlight.Add(1)
	defer l.inFlight.Add(-1)
	resp, err := l.client.Do(req)
	if err == nil {
		err = readAnswer(resp, &rec)
	}
	rec.End = time.Now()
	if err != nil {
		rec = Record{Target: rec.Target, Start: rec.Start, End: rec.End}
		switch {
		case cancelled.Load():
			rec.Cancelled = true
		case ctx.Err() != nil:
			rec.Aborted = true
		default:
			rec.Err = describeError(err)
		}
	}
	return rec
}

// estimate returns the moment before which a cancelled request is
// cancelled: the moving average of completion times, at least 1ms.
func (l *Load) estimate() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(l.est, time.Millisecond)
}

// Records returns the records of the requests finished so far, in the
// order they finished.
func (l *Load) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recs)
}

// Done is closed once every client has stopped by itself (Config.Requests
// reached, every target disabled) or after Stop.
func (l *Load) Done() <-chan struct{} { return l.done }

// Stop stops starting requests, waits for those in flight and returns all
// the records. A Load that was never started returns none.
func (l *Load) Stop() []Record {
	l.startOnce.Do(func() { close(l.done) }) // never started: nothing to wait for
	l.stop()
	<-l.done
	return l.Records()
}

// Close releases the idle connections of the Load's HTTP client.
func (l *Load) Close() { l.client.CloseIdleConnections() }

// progress writes a line per interval until stop is closed.
func (l *Load) progress(start time.Time, stop <-chan struct{}) {
	w := l.cfg.Progress
	if w == nil {
		<-stop
		return
	}
	tick := time.NewTicker(l.cfg.ProgressInterval)
	defer tick.Stop()
	var p progressCounts
	last, lastAt := 0, start
	for {
		select {
		case <-stop:
			if l.cfg.Live {
				fmt.Fprintln(w)
			}
			return
		case now := <-tick.C:
			l.mu.Lock()
			p.add(l.recs[p.seen:])
			l.mu.Unlock()
			rate := float64(p.seen-last) / now.Sub(lastAt).Seconds()
			last, lastAt = p.seen, now
			var b strings.Builder
			fmt.Fprintf(&b, "%6.1fs  %7.1f req/s  in flight %d  ok %d", now.Sub(start).Seconds(), rate, l.inFlight.Load(), p.ok)
			for _, code := range sortedKeys(p.others) {
				fmt.Fprintf(&b, "  %d:%d", code, p.others[code])
			}
			if p.cancelled > 0 {
				fmt.Fprintf(&b, "  cancelled:%d", p.cancelled)
			}
			if p.transport > 0 {
				fmt.Fprintf(&b, "  transport:%d", p.transport)
			}
			if l.cfg.Live {
				fmt.Fprintf(w, "\r\x1b[K%s", b.String())
			} else {
				fmt.Fprintln(w, b.String())
			}
		}
	}
}

// progressCounts are what a progress line shows, added up record by record.
type progressCounts struct {
	seen, ok, cancelled, transport int
	others                         map[int]int
}

func (p *progressCounts) add(recs []Record) {
	if p.others == nil {
		p.others = map[int]int{}
	}
	for _, r := range recs {
		p.seen++
		switch {
		case r.Cancelled:
			p.cancelled++
		case r.Status == 0 && !r.Aborted:
			p.transport++
		case r.Status/100 == 2:
			p.ok++
		default:
			p.others[r.Status]++
		}
	}
}
