package mockvendor

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Defaults used where an Options or Limit field is zero.
const (
	DefaultRetryAfter   = time.Second
	DefaultStreamChunks = 4
	DefaultMaxRecords   = 1_000_000
	DefaultModel        = "mock-model"
	// DefaultJitter is the Limit.Jitter of `sluice mockvendor` and of the
	// demo's vendor: on one machine or one Docker network the hop from a
	// gateway's grant to the arrival here varies by a few milliseconds,
	// and a vendor exact to the nanosecond would call that a violation.
	DefaultJitter = 20 * time.Millisecond
)

// Options configures a Vendor. The zero value is a fast, error-free vendor
// without authentication or limit enforcement; each field documents its
// default.
type Options struct {
	// LatencyMin and LatencyMax bound the latency of each /v1 request, drawn
	// uniformly at random per request. It is spent before the first byte of
	// the answer. Zero: no added latency. LatencyMax < LatencyMin means a
	// fixed LatencyMin.
	LatencyMin, LatencyMax time.Duration

	// ErrorRate is the fraction of /v1 requests answered 500 (after the
	// latency). Zero: none.
	ErrorRate float64
	// RateLimitRate is the fraction of /v1 requests answered 429 with a
	// Retry-After header (after the latency), independent of Limit. Zero:
	// none. ErrorRate+RateLimitRate must not exceed 1.
	RateLimitRate float64
	// RetryAfter is the Retry-After of random, forced and concurrency 429s,
	// sent in whole seconds rounded up. Zero: DefaultRetryAfter.
	RetryAfter time.Duration

	// APIKey, when set, is required as "Authorization: Bearer <APIKey>" on
	// every /v1 request; others get 401. Empty: no authentication.
	APIKey string

	// StreamChunks is the number of content chunks of a streamed answer.
	// Zero: DefaultStreamChunks.
	StreamChunks int
	// StreamInterval is the pause between two streamed chunks. Zero: none.
	StreamInterval time.Duration
	// StreamCutRate is the fraction of streamed answers cut mid-stream: the
	// connection is aborted after half of the chunks, without [DONE].
	StreamCutRate float64

	// Limit makes the vendor enforce a budget like a real one would,
	// answering 429 to requests that break it and counting them as
	// violations. Zero: nothing is enforced.
	Limit Limit

	// MaxRecords bounds the per-request records kept for Stats (a ring of the
	// most recent ones, 24 bytes each). Counters stay exact beyond it.
	// Zero: DefaultMaxRecords.
	MaxRecords int
}

// Limit is a budget enforced by the vendor: at most Concurrency requests in
// flight, and arrivals conforming to a token bucket of Burst tokens refilled
// at Rate per Period (equivalently, at most Burst + Rate*W/Period arrivals in
// any window of length W). A request that breaks either is answered 429 at
// once, without latency, and does not take a token.
type Limit struct {
	// Concurrency is C, the maximum number of requests in flight, counting
	// the arriving one. Zero: not enforced.
	Concurrency int
	// Rate is R, the number of requests per Period. Zero: not enforced.
	Rate int
	// Period is the period of Rate. Zero: one second.
	Period time.Duration
	// Burst is B, the bucket size. Zero: 1.
	Burst int
	// Jitter forgives arrivals that are up to this much early, absorbing
	// network jitter between the gateway's decision and the arrival here.
	// Zero: exact.
	Jitter time.Duration
}

// Enabled reports whether l enforces anything.
func (l Limit) Enabled() bool { return l.Concurrency > 0 || l.Rate > 0 }

// PerSecond returns the refill rate in requests per second (0 when Rate is
// not enforced).
func (l Limit) PerSecond() float64 {
	if l.Rate <= 0 {
		return 0
	}
	return float64(l.Rate) / l.period().Seconds()
}

func (l Limit) period() time.Duration {
	if l.Period <= 0 {
		return time.Second
	}
	return l.Period
}

func (l Limit) burst() int {
	if l.Burst <= 0 {
		return 1
	}
	return l.Burst
}

// Validate reports the first invalid field of o, if any.
func (o Options) Validate() error {
	rate := func(name string, v float64) error {
		if !(v >= 0 && v <= 1) { // also rejects NaN
			return fmt.Errorf("mockvendor: %s %v is not a fraction in [0,1]", name, v)
		}
		return nil
	}
	switch {
	case o.LatencyMin < 0 || o.LatencyMax < 0:
		return errors.New("mockvendor: negative latency")
	case o.RetryAfter < 0:
		return errors.New("mockvendor: negative RetryAfter")
	case o.StreamChunks < 0:
		return errors.New("mockvendor: negative StreamChunks")
	case o.StreamInterval < 0:
		return errors.New("mockvendor: negative StreamInterval")
	case o.MaxRecords < 0:
		return errors.New("mockvendor: negative MaxRecords")
	case o.Limit.Concurrency < 0 || o.Limit.Rate < 0 || o.Limit.Burst < 0 ||
		o.Limit.Period < 0 || o.Limit.Jitter < 0:
		return errors.New("mockvendor: negative Limit field")
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"ErrorRate", o.ErrorRate}, {"RateLimitRate", o.RateLimitRate}, {"StreamCutRate", o.StreamCutRate}} {
		if err := rate(r.name, r.v); err != nil {
			return err
		}
	}
	if o.ErrorRate+o.RateLimitRate > 1 {
		return errors.New("mockvendor: ErrorRate+RateLimitRate exceeds 1")
	}
	return nil
}

// ParseRate parses a rate written as "<n>/<period>", where period is s, m, h
// or a Go duration ("10/s", "60/m", "5/250ms", "100/2s"); a bare "<n>" means
// per second.
func ParseRate(s string) (n int, period time.Duration, err error) {
	num, per, found := strings.Cut(strings.TrimSpace(s), "/")
	n, err = strconv.Atoi(num)
	if err != nil || n < 0 {
		return 0, 0, fmt.Errorf("mockvendor: rate %q: want <n>/<period>, e.g. 10/s or 60/m", s)
	}
	period = time.Second
	if found {
		switch per {
		case "s", "sec", "second":
			period = time.Second
		case "m", "min", "minute":
			period = time.Minute
		case "h", "hour":
			period = time.Hour
		default:
			period, err = time.ParseDuration(per)
			if err != nil || period <= 0 {
				return 0, 0, fmt.Errorf("mockvendor: rate %q: period %q is not s, m, h or a positive duration", s, per)
			}
		}
	}
	return n, period, nil
}
