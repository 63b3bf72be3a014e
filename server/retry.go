package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
)

// releaseTimeout bounds the shielded release of a lease.
const releaseTimeout = 2 * time.Second

var (
	// errCallDeadline is the cause of a vendor call context whose
	// SLUICE_CALL_TIMEOUT expired.
	errCallDeadline = errors.New("server: call deadline")
	// errLeaseLost is the cause of a vendor call context whose lease ended
	// under it: the slot may be someone else's now, so the call stops.
	errLeaseLost = errors.New("server: lease lost")
)

// failure is why an attempt produced no answer to pass on. With answer set it
// is final: answer it, never retry (queue deadline, store down, SLA, client
// gone). Otherwise it may be retried.
type failure struct {
	answer *apiError
	// reason labels the retry metric: 5xx, 408, 429, call_timeout,
	// timeout, network, lease_lost.
	reason string
	// detail is a sentence for the client's 502 and the log.
	detail string
	// retryAfter is the vendor's Retry-After: wait at least this long.
	retryAfter time.Duration
}

// forward runs the attempts of one request. Each attempt is admitted on its
// own and releases its lease before the backoff sleep, so no slot or token is
// held while waiting to retry (the seed's non-negotiable rule).
func (s *Server) forward(c echo.Context, out *outbound) error {
	ctx := c.Request().Context()
	rec := recordOf(c)
	for attempt := 1; ; attempt++ {
		rec.attempts = attempt
		cl, f := s.attempt(ctx, out, rec)
		switch {
		case f == nil:
			return s.respond(c, cl)
		case f.answer != nil:
			return f.answer
		case attempt >= s.cfg.MaxAttempts:
			rec.detail = f.detail
			return errVendorFailed(attempt, f.detail)
		}
		delay := s.backoff(attempt, f.retryAfter)
		if !s.fits(ctx, delay) {
			rec.detail = f.detail + "; the request deadline leaves no time for another attempt"
			return errVendorFailed(attempt, rec.detail)
		}
		s.metrics.retries.WithLabelValues(f.reason).Inc()
		if s.sleep(ctx, delay) != nil {
			return endedAnswer(ctx)
		}
	}
}

// attempt admits one vendor call, sends it and reads its answer. On success
// the returned call holds what to pass on: a buffered answer (its lease
// already released) or an open stream (its lease held until respond ends it).
// Every other way out, a panic included, ends the call and releases the lease
// on the spot.
func (s *Server) attempt(ctx context.Context, out *outbound, rec *record) (*call, *failure) {
	lease, f := s.admit(ctx, rec)
	if f != nil {
		return nil, f
	}
	cl := s.newCall(ctx, lease)
	streaming := false
	defer func() {
		if !streaming {
			cl.finish()
		}
	}()
	if !lease.Held() { // e.g. this process was frozen past the lease TTL
		return nil, &failure{reason: "lease_lost", detail: "the admission lease was lost before sending"}
	}
	req, err := http.NewRequestWithContext(cl.traced(), out.method, out.url, bytes.NewReader(out.body))
	if err != nil { // cannot happen: the URL is built from a validated base
		return nil, &failure{answer: errInternal}
	}
	req.Header = out.header.Clone()
	cl.sent = true
	s.metrics.inflight.Inc()
	resp, err := s.client.Do(req)
	if err != nil {
		cl.failed(err)
		f := callFailure(ctx, cl.ctx, err)
		s.metrics.vendorAttempts.WithLabelValues(f.class()).Inc()
		return nil, f
	}
	resp.Body = &answerBody{ReadCloser: resp.Body, cl: cl}
	cl.resp = resp
	code := resp.StatusCode
	s.metrics.vendorAttempts.WithLabelValues(statusClass(code)).Inc()
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
		return nil, &failure{reason: statusClass(code), detail: fmt.Sprintf("the vendor answered HTTP %d", code),
			retryAfter: vendorRetryAfter(resp.Header)}
	}
	if isEventStream(resp.Header) {
		streaming = true
		return cl, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		cl.failed(err)
		return nil, callFailure(ctx, cl.ctx, err)
	}
	if len(body) > maxResponseBody {
		return nil, &failure{answer: errVendorFailed(rec.attempts, "the vendor's answer is larger than the gateway passes on")}
	}
	cl.body = body
	return cl, nil // the deferred finish releases the slot before the answer goes to a possibly slow client
}

// admit takes a token and a slot within the queue deadline.
func (s *Server) admit(ctx context.Context, rec *record) (Lease, *failure) {
	qctx, cancel := context.WithTimeout(ctx, s.cfg.QueueTimeout)
	defer cancel()
	start := time.Now()
	lease, err := s.adm.Acquire(qctx)
	wait := time.Since(start)
	rec.queueWait += wait
	s.metrics.queueWait.Observe(wait.Seconds())
	switch {
	case err == nil:
		s.metrics.admissions.WithLabelValues("admitted").Inc()
		return lease, nil
	case ctx.Err() != nil:
		s.metrics.admissions.WithLabelValues("canceled").Inc()
		return nil, &failure{answer: endedAnswer(ctx)}
	case errors.Is(err, ErrUnavailable):
		// The store failed, or did not answer a call before the deadline.
		// (A store that goes silent while a request only waits shows as a
		// queue timeout: 503 all the same, and /readyz turns red.)
		return nil, s.storeFailed(rec, err)
	case waitedOut(qctx, err), errors.Is(err, ErrQueueTimeout):
		// The deadline passed while the store answered, or the store
		// answered that the call cannot start in time.
		s.metrics.admissions.WithLabelValues("queue_timeout").Inc()
		return nil, &failure{answer: errQueueTimeout(s.cfg.QueueTimeout)}
	default:
		return nil, s.storeFailed(rec, err)
	}
}

// waitedOut reports whether an admission failed because its queue deadline
// passed while it waited (rather than because the store said in advance that
// it could not be met, or failed). The clock decides: the context's own timer
// may fire a moment after the admitter saw the deadline pass.
func waitedOut(qctx context.Context, err error) bool {
	deadline, _ := qctx.Deadline()
	return qctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || !time.Now().Before(deadline)
}

// storeFailed fails a request closed because the store did not answer.
func (s *Server) storeFailed(rec *record, err error) *failure {
	s.metrics.admissions.WithLabelValues("error").Inc()
	s.metrics.redisErrors.WithLabelValues("admit").Inc()
	s.log.Warn("admission failed: failing closed", "request_id", rec.requestID, "error", err)
	return &failure{answer: errBackend(s.cfg.QueueTimeout)}
}

// callFailure classifies the error of a vendor call (sending it, or reading
// its answer). ctx is the request's context, callCtx the call's.
func callFailure(ctx, callCtx context.Context, err error) *failure {
	if ctx.Err() != nil {
		return &failure{answer: endedAnswer(ctx), detail: "the request ended"}
	}
	switch cause := context.Cause(callCtx); {
	case errors.Is(cause, errLeaseLost):
		return &failure{reason: "lease_lost", detail: "the admission lease was lost during the call"}
	case errors.Is(cause, errCallDeadline):
		return &failure{reason: "call_timeout", detail: "the vendor did not answer within the call deadline"}
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return &failure{reason: "timeout", detail: "the connection to the vendor timed out"}
	}
	return &failure{reason: "network", detail: "the connection to the vendor failed"}
}

// class is the vendor-attempt metric label of a call that got no response.
func (f *failure) class() string {
	switch {
	case f.answer != nil:
		return "canceled"
	case f.reason == "call_timeout" || f.reason == "timeout":
		return "timeout"
	}
	return "error"
}

// endedAnswer answers a request whose context ended: 503 when the shutdown
// cut it, 504 when the request deadline passed, else the client went away.
func endedAnswer(ctx context.Context) *apiError {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errShutdownCut):
		return errShuttingDown
	case errors.Is(cause, errRequestDeadline):
		return errSLA
	}
	return errClientClosed
}

// statusClass is the metric label of a vendor status: 408 and 429 by
// themselves (they are retried), others by class.
func statusClass(code int) string {
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests {
		return strconv.Itoa(code)
	}
	return strconv.Itoa(code/100) + "xx"
}

// vendorRetryAfter reads how long the vendor asked to wait: retry-after-ms
// (OpenAI), else Retry-After in seconds or as an HTTP date. Zero if absent.
func vendorRetryAfter(h http.Header) time.Duration {
	const most = 24 * time.Hour // no overflow; any such wait exceeds every SLA anyway
	if ms, err := strconv.ParseFloat(h.Get("Retry-After-Ms"), 64); err == nil && ms > 0 {
		return time.Duration(min(ms, float64(most/time.Millisecond)) * float64(time.Millisecond))
	}
	v := h.Get("Retry-After")
	if secs, err := strconv.ParseFloat(v, 64); err == nil && secs > 0 {
		return time.Duration(min(secs, most.Seconds()) * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), most)
	}
	return 0
}

// backoff is the wait after a failed attempt: full jitter, uniform in
// [0, min(BackoffMax, BackoffBase*2^(attempt-1))], but at least what the
// vendor asked for.
func (s *Server) backoff(attempt int, vendorWait time.Duration) time.Duration {
	ceiling := s.cfg.BackoffBase
	for i := 1; i < attempt && ceiling < s.cfg.BackoffMax; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, s.cfg.BackoffMax)
	return max(rand.N(ceiling+1), vendorWait)
}

// fits reports whether, after sleeping delay, the request deadline still
// leaves a whole call deadline for another attempt. An attempt that cannot
// run its course would spend vendor budget on an answer nobody gets.
func (s *Server) fits(ctx context.Context, delay time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return !ok || time.Until(deadline)-delay >= s.cfg.CallTimeout
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// call is one admitted vendor call: its lease, its context (ending with the
// request, the call deadline, or the lease), and its answer.
type call struct {
	s     *Server
	ctx   context.Context
	lease Lease
	resp  *http.Response
	// body is the buffered answer; nil for a stream.
	body []byte
	// sent is set once the request went to the transport (in flight).
	sent bool
	// wrote is set once the request's headers were written to the vendor:
	// from then on the vendor may count the call.
	wrote atomic.Bool
	// complete is set when the vendor's answer was read to its end: the
	// vendor no longer counts the call.
	complete atomic.Bool
	// vendorEnded is set when the vendor or the network broke the call
	// (reset, refused, cut): the vendor knows it ended.
	vendorEnded bool

	parent context.Context
	stop   func() bool
	cancel func()
	once   sync.Once
}

func (s *Server) newCall(ctx context.Context, lease Lease) *call {
	lctx, cancelLease := context.WithCancelCause(ctx)
	stop := context.AfterFunc(lease.Context(), func() { cancelLease(errLeaseLost) })
	cctx, cancelCall := context.WithTimeoutCause(lctx, s.cfg.CallTimeout, errCallDeadline)
	return &call{s: s, ctx: cctx, lease: lease, parent: ctx, stop: stop,
		cancel: func() { cancelCall(); cancelLease(nil) }}
}

// traced returns the call's context with a trace that records when the
// request's headers are written.
func (cl *call) traced() context.Context {
	return httptrace.WithClientTrace(cl.ctx, &httptrace.ClientTrace{WroteHeaders: func() { cl.wrote.Store(true) }})
}

// failed records an error of the vendor call. Unless our side ended the call
// (its context: the client, a deadline, the lease, the shutdown; or a
// timeout of our transport), the vendor or the network broke it.
func (cl *call) failed(err error) {
	if cl.ctx.Err() != nil {
		return
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return
	}
	cl.vendorEnded = true
}

// answerBody is the vendor's answer; it records when it was read to its end.
type answerBody struct {
	io.ReadCloser
	cl *call
}

func (b *answerBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.cl.complete.Store(true)
	}
	return n, err
}

// cancelledAtVendor reports whether we ended the call while the vendor was
// still on it: the request reached it, its answer did not reach its end,
// and the vendor did not break the call itself. The vendor then learns that
// the call ended only when our closing of the connection (or stream) reaches
// it, one network hop later.
func (cl *call) cancelledAtVendor() bool {
	return cl.wrote.Load() && !cl.complete.Load() && !cl.vendorEnded
}

// finish ends the call, once: closes the answer, cancels the call context,
// and releases the lease, shielded from the request's cancellation by
// context.WithoutCancel and bounded by its own deadline. When we cancelled
// the call while the vendor was on it, the lease is held for the cancel
// grace first, in the background: the client's answer does not wait, and
// shutdown waits for it.
func (cl *call) finish() {
	cl.once.Do(func() {
		cl.stop() // ending the lease below must not look like losing it
		// A lease already lost holds no slot: nothing to hold.
		hold := cl.s.cfg.CancelGrace > 0 && cl.cancelledAtVendor() && cl.lease.Held()
		if cl.resp != nil {
			_ = cl.resp.Body.Close()
		}
		cl.cancel()
		if cl.sent {
			cl.s.metrics.inflight.Dec()
		}
		if !hold {
			cl.release()
			return
		}
		cl.s.metrics.graceHeld.Inc()
		cl.s.work.goTracked(func() {
			defer cl.s.metrics.graceHeld.Dec()
			time.Sleep(cl.s.cfg.CancelGrace)
			cl.release()
		})
	})
}

// release gives the lease back, shielded and bounded.
func (cl *call) release() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(cl.parent), releaseTimeout)
	defer cancel()
	if err := cl.lease.Release(ctx); err != nil {
		cl.s.metrics.redisErrors.WithLabelValues("release").Inc()
		cl.s.log.Warn("lease release failed; the lease expires by its TTL", "error", err)
	}
}
