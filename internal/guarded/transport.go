package guarded

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/sluicehq/sluice/semaphore"
)

// Admitter admits vendor calls against the shared budget: one Acquire takes
// one token of the cluster bucket AND one slot of the cluster semaphore,
// together (the token is spent when the call really goes).
type Admitter interface {
	// Acquire waits for a token and a slot, first come first served across
	// replicas. ctx's deadline is the queue deadline: when the slot cannot
	// be had before it, Acquire fails with an error matching
	// semaphore.ErrQueueTimeout, early if that is known in advance; matching
	// semaphore.ErrUnavailable too if the store did not answer by then.
	// When ctx is cancelled it returns ctx's error. Any other error means
	// the shared store is failing, and the call fails closed.
	Acquire(ctx context.Context) (Lease, error)
	// Check reports whether admission works: the store is reachable and
	// its scripts run.
	Check(ctx context.Context) error
	// Close releases every lease still held and stops background work.
	Close() error
}

// Lease is one admitted vendor call: a slot of the semaphore, held until
// Release.
type Lease interface {
	// Context is cancelled when the lease is lost (expired, taken over) or
	// released; the vendor call's context derives from it.
	Context() context.Context
	// Held reports whether the lease is still held, conservatively.
	Held() bool
	// Release gives the slot back. It is idempotent and shielded: it runs
	// even when ctx is already cancelled, with its own short deadline.
	Release(ctx context.Context) error
}

// Transport is the guarded vendor call as an http.RoundTripper. See package
// guard for what it does.
type Transport struct {
	cfg     Config
	adm     Admitter
	inner   *http.Transport
	metrics *Metrics
	log     *slog.Logger
	// Sleep waits between attempts; the gateway's tests replace it to
	// observe backoffs.
	Sleep func(ctx context.Context, d time.Duration) error
	work  Tracker

	closeOnce sync.Once
	closeErr  error
}

// New returns a Transport admitting calls with adm, configured by
// cfg.WithDefaults(). m and log may be nil.
func New(cfg Config, adm Admitter, m *Metrics, log *slog.Logger) *Transport {
	cfg = cfg.WithDefaults()
	if m == nil {
		m = NewMetrics(nil)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Transport{cfg: cfg, adm: adm, inner: newHTTPTransport(cfg), metrics: m, log: log, Sleep: sleepCtx}
}

// Config returns the configuration in effect, defaults filled.
func (t *Transport) Config() Config { return t.cfg }

// Metrics returns the transport's metrics.
func (t *Transport) Metrics() *Metrics { return t.metrics }

// Check reports whether admission works.
func (t *Transport) Check(ctx context.Context) error { return t.adm.Check(ctx) }

// Close waits (boundedly) for the leases held through their cancel grace,
// closes idle vendor connections and closes the admitter, which releases
// every lease still held.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		if !t.work.Wait(t.cfg.CancelGrace + 2*time.Second) {
			t.log.Warn("closing with lease releases still running; the admitter releases their leases")
		}
		t.inner.CloseIdleConnections()
		t.closeErr = t.adm.Close()
	})
	return t.closeErr
}

// newHTTPTransport returns the vendor transport with explicit timeouts, Go's
// counterparts of httpx's connect/read/write/pool timeouts: dial and TLS
// handshake (connect), response headers (read; the call deadline bounds the
// body, and the write), and connection limits (pool; waiting for a
// connection is bounded by the call deadline too). The semaphore caps calls
// cluster-wide, so one replica never needs more than Concurrency connections;
// the pool cap is a guard against leaks, not the throttle. It follows no
// redirects (a RoundTripper never does).
func newHTTPTransport(cfg Config) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.CallTimeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          2 * cfg.Concurrency,
		MaxIdleConnsPerHost:   cfg.Concurrency,
		MaxConnsPerHost:       2 * cfg.Concurrency,
		ForceAttemptHTTP2:     true,
	}
}

// Report is what a request's attempts did, for a caller that records them
// (the gateway's access log). Put one in the request's context with
// WithReport; the Transport fills it as the attempts go.
type Report struct {
	// Attempts is the number of attempts started.
	Attempts int
	// QueueWait is the time spent waiting for admission, all attempts
	// together.
	QueueWait time.Duration
	// Detail says what went wrong with the last failed attempt, if any.
	Detail string
	// CallDeadline is the call deadline of the attempt whose answer was
	// returned.
	CallDeadline time.Time
}

type reportKey struct{}

// WithReport returns ctx carrying r.
func WithReport(ctx context.Context, r *Report) context.Context {
	return context.WithValue(ctx, reportKey{}, r)
}

func reportOf(ctx context.Context) *Report {
	if r, ok := ctx.Value(reportKey{}).(*Report); ok {
		return r
	}
	return &Report{}
}

// failure is why an attempt produced no answer to return. With final set it
// is returned as it is, never retried (queue deadline, store down, the
// request ended, an answer that cannot be passed on). Otherwise it may be
// retried.
type failure struct {
	final error
	// reason labels the retry metric: 5xx, 408, 429, call_timeout,
	// timeout, network, lease_lost.
	reason string
	// detail is a sentence for the caller and the log.
	detail string
	// err is the attempt's error, when it got no answer.
	err error
	// resp is the attempt's answer (a retried status), buffered.
	resp *http.Response
	// retryAfter is the vendor's Retry-After: wait at least this long.
	retryAfter time.Duration
}

// RoundTrip sends req to the vendor as a guarded call, retried by the rules
// of package guard. It returns the vendor's answer (a retried status too,
// after the last attempt), or an error matching ErrQueueTimeout,
// ErrUnavailable, ErrVendorFailed, or the context's error.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	rep := reportOf(ctx)
	body, replay, err := t.replayable(req)
	if err != nil {
		return nil, err
	}
	defer body.closeUnsent()
	for attempt := 1; ; attempt++ {
		rep.Attempts = attempt
		resp, f := t.attempt(ctx, req, body, rep)
		if f == nil {
			return resp, nil
		}
		if f.final != nil {
			return nil, f.final
		}
		rep.Detail = f.detail
		if attempt >= t.cfg.MaxAttempts || !replay {
			return f.last(attempt)
		}
		delay := t.backoff(attempt, f.retryAfter)
		if !t.fits(ctx, delay) {
			rep.Detail = f.detail + "; the request deadline leaves no time for another attempt"
			f.detail = rep.Detail
			return f.last(attempt)
		}
		t.metrics.retries.WithLabelValues(f.reason).Inc()
		if err := t.Sleep(ctx, delay); err != nil {
			return nil, ctx.Err()
		}
	}
}

// last is the outcome of a request whose last attempt failed: the vendor's
// answer when there is one (its status and body tell the caller what
// happened, as without guard), else a *VendorError.
func (f *failure) last(attempts int) (*http.Response, error) {
	if f.resp != nil {
		return f.resp, nil
	}
	return nil, &VendorError{Attempts: attempts, Detail: f.detail, Err: f.err}
}

// body gives the request body of each attempt.
type body struct {
	// first is the caller's body, until an attempt sends it.
	first io.ReadCloser
	// again returns the body for the next attempts.
	again func() (io.ReadCloser, error)
}

// next returns the body to send.
func (b *body) next() (io.ReadCloser, error) {
	if f := b.first; f != nil {
		b.first = nil
		return f, nil
	}
	return b.again()
}

// closeUnsent closes the caller's body if no attempt sent it (the HTTP
// transport closes those it sends), as a RoundTripper must.
func (b *body) closeUnsent() {
	if b.first != nil {
		_ = b.first.Close()
	}
}

// replayable returns the request body of each attempt, and whether it can
// be sent more than once: with GetBody, or buffered when it is at most
// MaxRequestBody. A larger body without GetBody is sent once, without
// retries. The caller's request is never changed.
func (t *Transport) replayable(req *http.Request) (*body, bool, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return &body{again: func() (io.ReadCloser, error) { return http.NoBody, nil }}, true, nil
	}
	if req.GetBody != nil {
		return &body{first: req.Body, again: req.GetBody}, true, nil
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, t.cfg.MaxRequestBody+1))
	if err != nil {
		_ = req.Body.Close()
		return nil, false, err
	}
	if int64(len(buf)) > t.cfg.MaxRequestBody {
		once := readCloser{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
		return &body{first: once, again: func() (io.ReadCloser, error) { return nil, errSentOnce }}, false, nil
	}
	_ = req.Body.Close()
	return &body{again: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }}, true, nil
}

// errSentOnce cannot happen: a body that can be sent once is never retried.
var errSentOnce = errors.New("guard: the request body cannot be sent again")

type readCloser struct {
	io.Reader
	io.Closer
}

// attempt is one attempt: admission, then the vendor call.
func (t *Transport) attempt(ctx context.Context, req *http.Request, body *body, rep *Report) (*http.Response, *failure) {
	lease, f := t.admit(ctx, rep)
	if f != nil {
		return nil, f
	}
	return t.call(ctx, lease, req, body, rep)
}

// admit takes a token and a slot within the queue deadline. The admitter's
// outcomes are complete, so this only sorts them: the request ended, the
// store failed, or the queue deadline passed.
func (t *Transport) admit(ctx context.Context, rep *Report) (Lease, *failure) {
	qctx, cancel := context.WithTimeout(ctx, t.cfg.QueueTimeout)
	defer cancel()
	start := time.Now()
	lease, err := t.adm.Acquire(qctx)
	wait := time.Since(start)
	rep.QueueWait += wait
	t.metrics.queueWait.Observe(wait.Seconds())
	var final error
	switch {
	case err == nil:
		t.metrics.admissions.WithLabelValues("admitted").Inc()
		return lease, nil
	case ctx.Err() != nil:
		t.metrics.admissions.WithLabelValues("canceled").Inc()
		return nil, &failure{final: ctx.Err()}
	case isUnavailable(err):
		// The store failed, or did not answer a call before the deadline.
		// (A store that goes silent while a request only waits shows as a
		// queue timeout.)
		final = wrap(ErrUnavailable, err)
	case isQueueTimeout(err):
		t.metrics.admissions.WithLabelValues("queue_timeout").Inc()
		return nil, &failure{final: wrap(ErrQueueTimeout, err)}
	default:
		final = wrap(ErrUnavailable, err)
	}
	t.metrics.admissions.WithLabelValues("error").Inc()
	t.metrics.redisErrors.WithLabelValues("admit").Inc()
	return nil, &failure{final: final}
}

// backoff is the wait after a failed attempt: full jitter, uniform in
// [0, min(BackoffMax, BackoffBase*2^(attempt-1))], but at least what the
// vendor asked for.
func (t *Transport) backoff(attempt int, vendorWait time.Duration) time.Duration {
	ceiling := t.cfg.BackoffBase
	for i := 1; i < attempt && ceiling < t.cfg.BackoffMax; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, t.cfg.BackoffMax)
	return max(rand.N(ceiling+1), vendorWait)
}

// fits reports whether, after sleeping delay, the request deadline still
// leaves a whole call deadline for another attempt. An attempt that cannot
// run its course would spend vendor budget on an answer nobody gets.
// Without a deadline, a wait longer than a whole call deadline (a vendor's
// Retry-After may say hours) is not slept through either: the caller gets
// the vendor's answer, Retry-After included, and decides.
func (t *Transport) fits(ctx context.Context, delay time.Duration) bool {
	deadline, ok := ctx.Deadline()
	if !ok {
		return delay <= t.cfg.CallTimeout
	}
	return time.Until(deadline)-delay >= t.cfg.CallTimeout
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// StatusClass is the metric label of a vendor status: 408 and 429 by
// themselves (they are retried), others by class.
func StatusClass(code int) string {
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests {
		return strconv.Itoa(code)
	}
	return strconv.Itoa(code/100) + "xx"
}

// Tracker counts work in progress that must end before something closes:
// the leases a Transport holds through their cancel grace (before its
// admitter closes), the requests a gateway handles (before its transport
// and Redis close). Its zero value is ready to use.
type Tracker struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil before the first Add
}

// Add counts one more piece of work.
func (w *Tracker) Add() {
	w.mu.Lock()
	if w.n == 0 {
		w.idle = make(chan struct{})
	}
	w.n++
	w.mu.Unlock()
}

// Done ends one piece of work that Add counted.
func (w *Tracker) Done() {
	w.mu.Lock()
	w.n--
	if w.n == 0 {
		close(w.idle)
	}
	w.mu.Unlock()
}

// Go runs f in a goroutine counted as work.
func (w *Tracker) Go(f func()) {
	w.Add()
	go func() {
		defer w.Done()
		f()
	}()
}

// Count returns the work in progress.
func (w *Tracker) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// Wait waits up to d for the work in progress to end, and reports whether
// it did.
func (w *Tracker) Wait(d time.Duration) bool {
	w.mu.Lock()
	if w.n == 0 {
		w.mu.Unlock()
		return true
	}
	idle := w.idle
	w.mu.Unlock()
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-idle:
		return true
	case <-tm.C:
		return false
	}
}

// Semaphore is the Admitter of the semaphore of package semaphore, whose
// Acquire also takes a token of the budget's bucket in the same script.
type Semaphore struct{ *semaphore.Semaphore }

// Acquire returns the semaphore's lease as a Lease (and a nil interface on
// error, not a typed nil).
func (a Semaphore) Acquire(ctx context.Context) (Lease, error) {
	l, err := a.Semaphore.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return l, nil
}
