// Package guard is sluice's guarded vendor call as an http.RoundTripper: give
// it to the http.Client of any Go service (an Echo API, the openai-go SDK)
// and every replica, and every sluice gateway on the same budget name, share
// one vendor budget through Redis.
//
//	t, err := guard.New(rdb, "openai", guard.Options{Rate: limiter.Limit{Rate: 10, Burst: 2, Period: time.Second},
//		Concurrency: 3, QueueTimeout: 5 * time.Second, CallTimeout: 30 * time.Second, MaxAttempts: 3})
//	defer t.Close()
//	client := openai.NewClient(option.WithHTTPClient(&http.Client{Transport: t}), option.WithMaxRetries(0))
//
// # What a request goes through
//
// For each attempt (up to Options.MaxAttempts):
//
//   - the queue deadline (QueueTimeout): the attempt must START within it, or
//     the request fails with ErrQueueTimeout, never retried (the budget is
//     saturated: retrying would only add load);
//   - admission: one token of the budget's cluster token bucket (Rate) AND
//     one slot of its cluster lease semaphore (Concurrency), taken together
//     in one Redis script when the call really goes, first come first served
//     across replicas; if Redis fails or does not answer, ErrUnavailable at
//     once (fail closed: replicas admitting on their own would break the
//     budget exactly when things go wrong);
//   - the call deadline (CallTimeout), from sending to the last byte of the
//     answer, streams included; the call's context also ends when the
//     lease is lost (a frozen process whose lease expired must not call the
//     vendor on a slot that is now someone else's);
//   - the vendor's HTTP transport, with connect, TLS, response-header and
//     pool limits; redirects are returned, not followed (an http.Client
//     around the Transport follows them, each hop admitted on its own: set
//     its CheckRedirect to return http.ErrUseLastResponse to avoid that);
//   - the lease is released, shielded (it runs even when the request's
//     context is cancelled, with its own short deadline), BEFORE the backoff
//     sleep: a request waiting to retry holds no slot and no token.
//
// Between attempts it sleeps a full-jitter backoff, uniform in
// [0, min(BackoffMax, BackoffBase*2^(attempt-1))], but at least the vendor's
// retry-after-ms or Retry-After.
//
// # Retry rules
//
// Retried: network errors, vendor timeouts, the call deadline, a lost
// lease, HTTP 5xx, 408 and 429. Never retried: a queue timeout, an
// unreachable store, any other answer (2xx, 3xx, other 4xx are returned as
// the vendor sent them), a caller gone (the request's context ended), and a
// request whose deadline, after the backoff, leaves less than a whole
// CallTimeout for another attempt.
//
// # What RoundTrip returns
//
// The vendor's answer, when there is one: after the last attempt a retried
// status (a 503, a 429 with its Retry-After) is returned as the vendor sent
// it, body included, not turned into an error. That is what any
// http.RoundTripper does, so an SDK keeps its own error mapping (openai-go
// returns an *openai.Error with the vendor's status and message), and an
// app that wants to pass the vendor's Retry-After on can. When no answer
// came (network errors, call deadlines, lost leases), the error is a
// *VendorError (matching ErrVendorFailed) with the attempts made and the
// last error. Otherwise the error matches ErrQueueTimeout, ErrUnavailable,
// or is the request context's error. An http.Client wraps each of them in
// a *url.Error; errors.Is sees through it.
//
// # Bodies
//
// A request body is sent again on every attempt: through Request.GetBody
// when set (http.NewRequest sets it for bytes, strings and bytes.Reader
// bodies, and SDKs do), else it is buffered, up to MaxRequestBody (4 MiB).
// A larger body without GetBody is sent once, with no retry.
//
// A non-streaming answer is read whole (up to MaxResponseBody, 32 MiB)
// under the call deadline, and the lease is released before RoundTrip
// returns, so a slow reader never holds a vendor slot; a body cut short is
// retried like a network error. A streamed answer (text/event-stream) holds
// the lease until its body is read to the end, fails, or is closed; a body
// never closed is released by the call deadline whatever the caller does.
// A stream that breaks returns a *StreamError from Read, matching
// ErrCallTimeout or ErrLeaseLost when those ended it.
//
// # Cancel grace
//
// When a call is cancelled while the vendor is working on it (the caller
// went away, a deadline passed), the vendor learns of it one network hop
// later; the lease is held CancelGrace longer, in the background, lest the
// next call arrive first and the vendor count one call too many. Close
// waits for those.
//
// # The SDK's own retries
//
// Turn them off: option.WithMaxRetries(0) for openai-go. Each SDK retry
// would run all of guard's attempts again, multiplying the attempts the
// vendor sees (3 x 3 = 9 instead of 3), sleep without knowing the request's
// deadline, and retry a queue timeout that must not be. The other way
// round (MaxAttempts: 1 and the SDK retrying) also keeps each attempt
// admitted, but loses the rules above: the SDK does not know the queue
// deadline, the call deadline or the cancel grace.
//
// # Metrics
//
// Metrics returns a prometheus.Collector of the sluice_* metrics of
// admission, attempts, retries and leases, for the app to register.
//
// A Transport is safe for concurrent use by many goroutines.
package guard

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/guarded"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

// The errors of a guarded call, checked with errors.Is.
var (
	// ErrQueueTimeout means the call could not start within the queue
	// deadline: the budget is saturated. It is never retried. The error
	// also matches semaphore.ErrQueueTimeout.
	ErrQueueTimeout = guarded.ErrQueueTimeout
	// ErrUnavailable means Redis failed or did not answer, so the call
	// was not admitted (fail closed). The error also matches
	// semaphore.ErrUnavailable when the semaphore reported it.
	ErrUnavailable = guarded.ErrUnavailable
	// ErrVendorFailed means every attempt failed without an HTTP answer to
	// return, or the answer could not be passed on; the error is a
	// *VendorError.
	ErrVendorFailed = guarded.ErrVendorFailed
	// ErrCallTimeout means an attempt, or a stream, passed the call
	// deadline.
	ErrCallTimeout = guarded.ErrCallTimeout
	// ErrLeaseLost means the admission lease ended under the call, which
	// then stopped.
	ErrLeaseLost = guarded.ErrLeaseLost
)

// VendorError is the error of a request whose attempts all failed without
// an HTTP answer to return. It matches ErrVendorFailed and unwraps to the
// last attempt's error.
type VendorError = guarded.VendorError

// StreamError is the error Read returns when a streamed answer breaks.
type StreamError = guarded.StreamError

// Options configure a Transport. A zero field means the same default as
// sluice serve's variable of the same name.
type Options struct {
	// Rate is the vendor's request rate and burst, cluster-wide. Default
	// 60 per minute, burst 1 (SLUICE_RATE, SLUICE_BURST).
	Rate limiter.Limit
	// Concurrency is the most vendor calls in flight, cluster-wide.
	// Default 3.
	Concurrency int
	// QueueTimeout is the longest an attempt may wait to START. Default 5s.
	QueueTimeout time.Duration
	// CallTimeout bounds one attempt, from sending to the last byte of the
	// answer, streams included. Default 30s.
	CallTimeout time.Duration
	// MaxAttempts is the most attempts per request (1: no retries).
	// Default 3.
	MaxAttempts int
	// LeaseTTL is the semaphore lease TTL: a dead replica's slots come back
	// within it. Default 15s.
	LeaseTTL time.Duration
	// CancelGrace holds the slot of a call cancelled at the vendor this
	// long. Default 250ms; negative: off.
	CancelGrace time.Duration
	// BackoffBase and BackoffMax shape the full-jitter backoff. Defaults
	// 250ms and 10s.
	BackoffBase, BackoffMax time.Duration
	// ConnectTimeout bounds dialling the vendor and the TLS handshake.
	// Default 5s.
	ConnectTimeout time.Duration
	// MaxRequestBody bounds the buffer of a request body without GetBody.
	// Default 4 MiB.
	MaxRequestBody int64
	// MaxResponseBody bounds a non-streaming answer. Default 32 MiB.
	MaxResponseBody int64
	// Logger receives warnings (a lease release that failed). Default:
	// none.
	Logger *slog.Logger
}

// Transport is an http.RoundTripper whose calls go through the budget's
// admission and the retry rules of the package documentation. Close it to
// release its leases.
type Transport struct {
	t *guarded.Transport
	m *guarded.Metrics
}

// New returns a Transport that admits calls against the budget named
// budget in rdb (standalone, Sentinel or Cluster), shared with every other
// Transport and sluice gateway of that name on the same Redis.
//
// For a call to fail by its queue deadline when Redis hangs (rather than
// after the client's read timeout, 3s by default), give New a client that
// honours context deadlines: go-redis Options.ContextTimeoutEnabled, as
// sluice serve sets it. Its command retries may be left on: the scripts
// recognise a repeated call.
func New(rdb redis.UniversalClient, budget string, opt Options) (*Transport, error) {
	if rdb == nil {
		return nil, errors.New("guard: a Redis client is required")
	}
	if opt.Rate.IsZero() {
		opt.Rate = guarded.DefaultRate
	}
	if err := opt.Rate.Validate(); err != nil {
		return nil, err
	}
	if opt.Concurrency <= 0 {
		opt.Concurrency = guarded.DefaultConcurrency
	}
	if opt.LeaseTTL <= 0 {
		opt.LeaseTTL = guarded.DefaultLeaseTTL
	}
	sem, err := semaphore.New(rdb, budget, semaphore.Options{Size: opt.Concurrency, LeaseTTL: opt.LeaseTTL, Rate: opt.Rate})
	if err != nil {
		return nil, err
	}
	m := guarded.NewMetrics(nil)
	cfg := guarded.Config{
		Concurrency: opt.Concurrency, QueueTimeout: opt.QueueTimeout, CallTimeout: opt.CallTimeout,
		MaxAttempts: opt.MaxAttempts, CancelGrace: opt.CancelGrace, BackoffBase: opt.BackoffBase,
		BackoffMax: opt.BackoffMax, ConnectTimeout: opt.ConnectTimeout, MaxRequestBody: opt.MaxRequestBody,
		MaxResponseBody: opt.MaxResponseBody,
	}
	return &Transport{t: guarded.New(cfg, guarded.Semaphore{Semaphore: sem}, m, opt.Logger), m: m}, nil
}

// RoundTrip sends req as a guarded call. See the package documentation for
// what it returns.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) { return t.t.RoundTrip(req) }

// Check reports whether admission works: Redis is reachable and the
// scripts run. An app's readiness probe may call it.
func (t *Transport) Check(ctx context.Context) error { return t.t.Check(ctx) }

// Metrics returns the Transport's metrics, for the app to register.
func (t *Transport) Metrics() prometheus.Collector { return t.m }

// Close waits (at most the cancel grace and 2s more) for leases held
// through their cancel grace, then releases every lease still held and
// stops background work. It does not close the Redis client.
func (t *Transport) Close() error { return t.t.Close() }
