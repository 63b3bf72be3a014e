package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// maxResponseBody bounds a non-streaming vendor answer, which the gateway
// buffers so it can release the lease before writing to a slow client, and
// retry a body cut short.
const maxResponseBody = 32 << 20

var (
	// errCallDeadline is the cause of a vendor call context whose
	// SLUICE_CALL_TIMEOUT expired.
	errCallDeadline = errors.New("server: call deadline")
	// errLeaseLost is the cause of a vendor call context whose lease ended
	// under it: the slot may be someone else's now, so the call stops.
	errLeaseLost = errors.New("server: lease lost")
)

// newTransport returns the vendor transport with explicit timeouts, Go's
// counterparts of httpx's connect/read/write/pool timeouts: dial and TLS
// handshake (connect), response headers (read; the call deadline bounds the
// body, and the write), and connection limits (pool; waiting for a
// connection is bounded by the call deadline too). The semaphore caps calls
// cluster-wide, so one replica never needs more than Concurrency connections;
// the pool cap is a guard against leaks, not the throttle. The gateway never
// sends Expect: 100-continue, so no call waits for a vendor that ignores it.
func newTransport(cfg Config) *http.Transport {
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

// noRedirects passes a vendor redirect to the client instead of following
// it: following would be a vendor call the budget never admitted.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// call sends one admitted vendor call and reads its answer. On success the
// returned call holds what to pass on: a buffered answer (its lease already
// released) or an open stream (its lease held until respond ends it). Every
// other way out, a panic included, ends the call and releases the lease on
// the spot.
func (s *gateway) call(ctx context.Context, lease vendorLease, out *outbound, rec *record) (*call, *failure) {
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
		f := cl.failure(err)
		s.metrics.vendorAttempts.WithLabelValues(f.class()).Inc()
		return nil, f
	}
	resp.Body = &answerBody{ReadCloser: resp.Body, cl: cl}
	cl.resp = resp
	code := resp.StatusCode
	s.metrics.vendorAttempts.WithLabelValues(statusClass(code)).Inc()
	switch {
	case code < 200 || code > 599:
		// Not a final answer HTTP knows (a 101 would hand the client a
		// raw connection to the vendor).
		rec.detail = fmt.Sprintf("the vendor answered HTTP %d, not a final status", code)
		return nil, &failure{answer: errVendorFailed(rec.attempts, "the vendor's answer was not a valid HTTP answer")}
	case code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusProxyAuthRequired:
		// The vendor refused our vendor key: not the client's fault, and
		// the vendor's message may quote part of the key. Log only.
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxLoggedDetail))
		rec.detail = fmt.Sprintf("the vendor refused the vendor key (HTTP %d): %s", code, b)
		s.log.Error("the vendor refused the vendor key: check SLUICE_UPSTREAM_API_KEY", "request_id", rec.requestID, "status", code)
		return nil, &failure{answer: errUpstreamAuth}
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
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
		return nil, cl.failure(err)
	}
	if len(body) > maxResponseBody {
		return nil, &failure{answer: errVendorFailed(rec.attempts, "the vendor's answer is larger than the gateway passes on")}
	}
	cl.body = body
	return cl, nil // the deferred finish releases the slot before the answer goes to a possibly slow client
}

// statusClass is the metric label of a vendor status: 408 and 429 by
// themselves (they are retried), others by class.
func statusClass(code int) string {
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests {
		return strconv.Itoa(code)
	}
	return strconv.Itoa(code/100) + "xx"
}

// call is one admitted vendor call: its lease, its context (ending with the
// request, the call deadline, or the lease), and its answer.
type call struct {
	s     *gateway
	ctx   context.Context
	lease vendorLease
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

func (s *gateway) newCall(ctx context.Context, lease vendorLease) *call {
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
// and releases the lease (shielded from the request's cancellation). When we cancelled
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

// release gives the lease back; Release is shielded and bounded itself.
func (cl *call) release() {
	if err := cl.lease.Release(cl.parent); err != nil {
		cl.s.metrics.redisErrors.WithLabelValues("release").Inc()
		cl.s.log.Warn("lease release failed; the lease expires by its TTL", "error", err)
	}
}

// failure classifies the error of the vendor call (sending it, or reading
// its answer): the request ended, the lease was lost, the call deadline
// passed, or the network failed.
func (cl *call) failure(err error) *failure {
	if cl.parent.Err() != nil {
		return &failure{answer: endedAnswer(cl.parent), detail: "the request ended"}
	}
	switch cause := context.Cause(cl.ctx); {
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
