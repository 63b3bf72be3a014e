package server

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// failure is why an attempt produced no answer to pass on. With answer set it
// is final: answer it, never retry (queue deadline, store down, SLA, client
// gone, the vendor refusing our key). Otherwise it may be retried.
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

// forward runs the attempts of one request and returns the call whose
// answer is to be passed on. Each attempt is admitted on its own and
// releases its lease before the backoff sleep, so no slot or token is held
// while waiting to retry: a sleeping request must not block the calls that
// could run. It knows nothing
// of Echo: ctx is the request's, deadline included.
func (s *gateway) forward(ctx context.Context, out *outbound, rec *record) (*call, error) {
	for attempt := 1; ; attempt++ {
		rec.attempts = attempt
		cl, f := s.attempt(ctx, out, rec)
		switch {
		case f == nil:
			return cl, nil
		case f.answer != nil:
			return nil, f.answer
		case attempt >= s.cfg.MaxAttempts:
			rec.detail = f.detail
			return nil, errVendorFailed(attempt, f.detail)
		}
		delay := s.backoff(attempt, f.retryAfter)
		if !s.fits(ctx, delay) {
			rec.detail = f.detail + "; the request deadline leaves no time for another attempt"
			return nil, errVendorFailed(attempt, rec.detail)
		}
		s.metrics.retries.WithLabelValues(f.reason).Inc()
		if s.sleep(ctx, delay) != nil {
			return nil, endedAnswer(ctx)
		}
	}
}

// attempt is one attempt: admission, then the vendor call.
func (s *gateway) attempt(ctx context.Context, out *outbound, rec *record) (*call, *failure) {
	lease, f := s.admit(ctx, rec)
	if f != nil {
		return nil, f
	}
	return s.call(ctx, lease, out, rec)
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
func (s *gateway) backoff(attempt int, vendorWait time.Duration) time.Duration {
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
func (s *gateway) fits(ctx context.Context, delay time.Duration) bool {
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
