package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/sluicehq/sluice/internal/guarded"
)

// guardConfig is the configuration of the gateway's guarded vendor call.
func guardConfig(cfg Config) guarded.Config {
	grace := cfg.CancelGrace
	if grace == 0 {
		grace = -1 // SLUICE_CANCEL_GRACE=0 is off
	}
	return guarded.Config{
		Concurrency: cfg.Concurrency, QueueTimeout: cfg.QueueTimeout, CallTimeout: cfg.CallTimeout,
		MaxAttempts: cfg.MaxAttempts, CancelGrace: grace, BackoffBase: cfg.BackoffBase, BackoffMax: cfg.BackoffMax,
		ConnectTimeout: cfg.ConnectTimeout, MaxRequestBody: cfg.MaxBody,
	}
}

// forward sends a checked client request to the vendor through the guarded
// call (package guard's Transport: per attempt the queue deadline,
// admission, the call deadline bound to the lease; retries outside the
// slot) and returns the answer to pass on, or the error to answer. It knows
// nothing of Echo: ctx is the request's, deadline included.
func (s *gateway) forward(ctx context.Context, out *outbound, rec *record) (*http.Response, error) {
	rep := &guarded.Report{}
	req, err := http.NewRequestWithContext(guarded.WithReport(ctx, rep), out.method, out.url, bytes.NewReader(out.body))
	if err != nil { // cannot happen: the URL is built from a validated base
		return nil, errInternal
	}
	req.Header = out.header.Clone()
	resp, err := s.guard.RoundTrip(req)
	rec.attempts, rec.queueWait, rec.callDeadline = rep.Attempts, rep.QueueWait, rep.CallDeadline
	if err != nil {
		var ve *guarded.VendorError
		switch {
		case ctx.Err() != nil:
			return nil, endedAnswer(ctx)
		case errors.Is(err, guarded.ErrUnavailable):
			// The store failed, or did not answer a call before the
			// deadline. (A store that goes silent while a request only
			// waits shows as a queue timeout: 503 all the same, and
			// /readyz turns red.)
			return nil, s.storeFailed(rec, err)
		case errors.Is(err, guarded.ErrQueueTimeout):
			return nil, errQueueTimeout(s.cfg.QueueTimeout)
		case errors.As(err, &ve):
			rec.detail = ve.Detail
			return nil, errVendorFailed(ve.Attempts, ve.Detail)
		}
		return nil, err
	}
	switch code := resp.StatusCode; {
	case code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusProxyAuthRequired:
		// The vendor refused our vendor key: not the client's fault, and
		// the vendor's message may quote part of the key. Log only.
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxLoggedDetail))
		_ = resp.Body.Close()
		rec.detail = fmt.Sprintf("the vendor refused the vendor key (HTTP %d): %s", code, b)
		s.log.Error("the vendor refused the vendor key: check SLUICE_UPSTREAM_API_KEY", "request_id", rec.requestID, "status", code)
		return nil, errUpstreamAuth
	case guarded.Retryable(code):
		// The last attempt failed too (or the request deadline left no
		// room for another).
		_ = resp.Body.Close()
		rec.detail = rep.Detail
		return nil, errVendorFailed(rep.Attempts, rep.Detail)
	}
	return resp, nil
}
