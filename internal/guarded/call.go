package guarded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/semaphore"
)

func isUnavailable(err error) bool  { return errors.Is(err, semaphore.ErrUnavailable) }
func isQueueTimeout(err error) bool { return errors.Is(err, semaphore.ErrQueueTimeout) }

// call sends one admitted vendor call. On success it returns the answer to
// pass on: buffered (its lease already released) or an open stream (its
// lease held until the body is read to its end, closed, or the call
// deadline passes). Every other way out, a panic included, ends the call and
// releases the lease on the spot.
func (t *Transport) call(ctx context.Context, lease Lease, req *http.Request, body *body, rep *Report) (*http.Response, *failure) {
	cl := t.newCall(ctx, lease)
	streaming := false
	defer func() {
		if !streaming {
			cl.finish()
		}
	}()
	if !lease.Held() { // e.g. this process was frozen past the lease TTL
		return nil, &failure{reason: "lease_lost", detail: "the admission lease was lost before sending", err: ErrLeaseLost}
	}
	out := req.Clone(cl.traced())
	b, err := body.next()
	if err != nil {
		return nil, &failure{final: err}
	}
	out.Body = b
	cl.sent = true
	t.metrics.inflight.Inc()
	resp, err := t.inner.RoundTrip(out)
	if err != nil {
		cl.failed(err)
		f := cl.failure(err)
		t.metrics.vendorAttempts.WithLabelValues(f.class()).Inc()
		return nil, f
	}
	cl.raw = resp.Body
	resp.Request = req
	code := resp.StatusCode
	t.metrics.vendorAttempts.WithLabelValues(StatusClass(code)).Inc()
	if code < 200 || code > 599 {
		// Not a final answer HTTP knows (a 101 would hand the caller a
		// raw connection to the vendor).
		return nil, &failure{final: &VendorError{Attempts: rep.Attempts,
			Detail: fmt.Sprintf("the vendor answered HTTP %d, not a final status", code)}}
	}
	if isEventStream(resp.Header) && !Retryable(code) {
		streaming = true
		rep.CallDeadline, _ = cl.ctx.Deadline()
		resp.Body = &streamBody{rc: resp.Body, cl: cl}
		context.AfterFunc(cl.ctx, cl.finish) // a body never closed is released by the call deadline
		return resp, nil
	}
	buf, err := io.ReadAll(io.LimitReader(&answerBody{rc: resp.Body, cl: cl}, t.cfg.MaxResponseBody+1))
	if err != nil {
		cl.failed(err)
		return nil, cl.failure(err)
	}
	if int64(len(buf)) > t.cfg.MaxResponseBody {
		return nil, &failure{final: &VendorError{Attempts: rep.Attempts,
			Detail: "the vendor's answer is larger than the gateway passes on"}}
	}
	resp.Body = io.NopCloser(bytes.NewReader(buf))
	resp.ContentLength = int64(len(buf))
	resp.Header.Del("Content-Length")
	if code != http.StatusNoContent && code != http.StatusNotModified {
		resp.Header.Set("Content-Length", strconv.Itoa(len(buf)))
	}
	if Retryable(code) {
		return nil, &failure{reason: StatusClass(code), detail: fmt.Sprintf("the vendor answered HTTP %d", code),
			resp: resp, retryAfter: RetryAfter(resp.Header)}
	}
	rep.CallDeadline, _ = cl.ctx.Deadline()
	return resp, nil // the deferred finish releases the slot before the caller reads the answer
}

func isEventStream(h http.Header) bool {
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return mt == "text/event-stream"
}

// call is one admitted vendor call: its lease, its context (ending with the
// request, the call deadline, or the lease), and its answer.
type call struct {
	t     *Transport
	ctx   context.Context
	lease Lease
	// raw is the vendor's answer body as the HTTP transport returned it.
	raw io.ReadCloser
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
	vendorEnded atomic.Bool

	parent context.Context
	stop   func() bool
	cancel func()
	once   sync.Once
}

func (t *Transport) newCall(ctx context.Context, lease Lease) *call {
	lctx, cancelLease := context.WithCancelCause(ctx)
	stop := context.AfterFunc(lease.Context(), func() { cancelLease(ErrLeaseLost) })
	cctx, cancelCall := context.WithTimeoutCause(lctx, t.cfg.CallTimeout, ErrCallTimeout)
	return &call{t: t, ctx: cctx, lease: lease, parent: ctx, stop: stop,
		cancel: func() { cancelCall(); cancelLease(nil) }}
}

// traced returns the call's context with a trace that records when the
// request's headers are written.
func (cl *call) traced() context.Context {
	return httptrace.WithClientTrace(cl.ctx, &httptrace.ClientTrace{WroteHeaders: func() { cl.wrote.Store(true) }})
}

// failed records an error of the vendor call. Unless our side ended the call
// (its context: the caller, a deadline, the lease; or a timeout of our
// transport), the vendor or the network broke it.
func (cl *call) failed(err error) {
	if cl.ctx.Err() != nil {
		return
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return
	}
	cl.vendorEnded.Store(true)
}

// answerBody is the vendor's answer; it records when it was read to its end.
type answerBody struct {
	rc io.ReadCloser
	cl *call
}

func (b *answerBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.cl.complete.Store(true)
	}
	return n, err
}

// streamBody is a streamed answer: it holds the lease until it is read to
// its end, fails, or is closed, and says why a read failed.
type streamBody struct {
	rc io.ReadCloser
	cl *call
}

func (b *streamBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.cl.complete.Store(true)
		b.cl.finish()
	case err != nil:
		b.cl.failed(err)
		f := b.cl.failure(err)
		b.cl.finish()
		if f.final != nil {
			err = f.final
		} else {
			err = &StreamError{Detail: f.detail, Err: f.err}
		}
	}
	return n, err
}

func (b *streamBody) Close() error {
	b.cl.finish()
	return nil
}

// StreamError is the error of a stream that broke after its answer began.
// It matches ErrCallTimeout or ErrLeaseLost when those ended it.
type StreamError struct {
	// Detail says what broke the stream, in a sentence fit for a client.
	Detail string
	// Err is the cause.
	Err error
}

func (e *StreamError) Error() string { return "guard: the stream broke: " + e.Detail }

func (e *StreamError) Unwrap() error { return e.Err }

// cancelledAtVendor reports whether we ended the call while the vendor was
// still on it: the request reached it, its answer did not reach its end,
// and the vendor did not break the call itself. The vendor then learns that
// the call ended only when our closing of the connection (or stream) reaches
// it, one network hop later.
func (cl *call) cancelledAtVendor() bool {
	return cl.wrote.Load() && !cl.complete.Load() && !cl.vendorEnded.Load()
}

// finish ends the call, once: closes the answer, cancels the call context,
// and releases the lease (shielded from the request's cancellation). When we
// cancelled the call while the vendor was on it, the lease is held for the
// cancel grace first, in the background: the caller does not wait, and
// Close waits for it.
func (cl *call) finish() {
	cl.once.Do(func() {
		cl.stop() // ending the lease below must not look like losing it
		// A lease already lost holds no slot: nothing to hold.
		hold := cl.t.cfg.CancelGrace > 0 && cl.cancelledAtVendor() && cl.lease.Held()
		if cl.raw != nil {
			_ = cl.raw.Close()
		}
		cl.cancel()
		if cl.sent {
			cl.t.metrics.inflight.Dec()
		}
		if !hold {
			cl.release()
			return
		}
		cl.t.metrics.graceHeld.Inc()
		cl.t.work.Go(func() {
			defer cl.t.metrics.graceHeld.Dec()
			time.Sleep(cl.t.cfg.CancelGrace)
			cl.release()
		})
	})
}

// release gives the lease back; Release is shielded and bounded itself.
func (cl *call) release() {
	if err := cl.lease.Release(cl.parent); err != nil {
		cl.t.metrics.redisErrors.WithLabelValues("release").Inc()
		cl.t.log.Warn("lease release failed; the lease expires by its TTL", "error", err)
	}
}

// failure classifies the error of the vendor call (sending it, or reading
// its answer): the request ended, the lease was lost, the call deadline
// passed, or the network failed.
func (cl *call) failure(err error) *failure {
	if cl.parent.Err() != nil {
		return &failure{final: cl.parent.Err(), detail: "the request ended"}
	}
	ne, timeout := errors.AsType[net.Error](err)
	timeout = timeout && ne.Timeout()
	deadline, _ := cl.ctx.Deadline()
	switch cause := context.Cause(cl.ctx); {
	case timeout && !time.Now().Before(deadline):
		// The transport's response-header timeout is the call deadline
		// too; whichever fired first, the call deadline passed.
		fallthrough
	case errors.Is(cause, ErrCallTimeout):
		return &failure{reason: "call_timeout", detail: "the vendor did not answer within the call deadline", err: wrap(ErrCallTimeout, err)}
	case errors.Is(cause, ErrLeaseLost):
		return &failure{reason: "lease_lost", detail: "the admission lease was lost during the call", err: wrap(ErrLeaseLost, err)}
	}
	if timeout {
		return &failure{reason: "timeout", detail: "the connection to the vendor timed out", err: err}
	}
	return &failure{reason: "network", detail: "the connection to the vendor failed", err: err}
}

// class is the vendor-attempt metric label of a call that got no response.
func (f *failure) class() string {
	switch {
	case f.final != nil:
		return "canceled"
	case f.reason == "call_timeout" || f.reason == "timeout":
		return "timeout"
	}
	return "error"
}
