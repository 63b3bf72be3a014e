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
	// DefaultMaxTokens is the output allowance of a request that names
	// neither max_tokens nor max_completion_tokens (Options.DefaultMaxTokens).
	DefaultMaxTokens = 1024
	// DefaultOutageStatus is the status answered during an outage.
	DefaultOutageStatus = 500
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
	// RetryAfter is the Retry-After of random, forced, outage and
	// concurrency 429s, sent in whole seconds rounded up (and in
	// retry-after-ms). Zero: DefaultRetryAfter.
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

	// DefaultMaxTokens is the output allowance counted in the token
	// estimate of a request that names neither max_tokens nor
	// max_completion_tokens. Zero: DefaultMaxTokens.
	DefaultMaxTokens int
	// CompletionTokens, when positive, is the completion_tokens of every
	// answer's usage. Zero: see CompletionFraction.
	CompletionTokens int
	// CompletionFraction, when positive and CompletionTokens is zero, makes
	// completion_tokens the output allowance (max_tokens, else
	// max_completion_tokens, else DefaultMaxTokens, times n) times this
	// fraction, rounded up; above 1 the real usage exceeds the estimate.
	// Zero (with CompletionTokens zero): the number of StreamChunks.
	CompletionFraction float64

	// Outage schedules a window of failures after the start of each epoch
	// (New or Reset). Zero: none. POST /outage starts one at any time.
	Outage Outage

	// MaxRecords bounds the per-request records kept for Stats (a ring of the
	// most recent ones, 40 bytes each). Counters stay exact beyond it.
	// Zero: DefaultMaxRecords.
	MaxRecords int
}

// Outage is a window during which every measured request is answered
// Status at once, without latency and without touching the Limit: a vendor
// that is down. It spans [Start, Start+Duration) from the start of the
// epoch.
type Outage struct {
	// Start is the offset of the outage from the start of the epoch.
	Start time.Duration
	// Duration is its length. Zero: no scheduled outage.
	Duration time.Duration
	// Status is the status answered (400-599). Zero: DefaultOutageStatus.
	Status int
}

// Limit is a budget enforced by the vendor: at most Concurrency requests in
// flight, and arrivals conforming to a token bucket of Burst tokens refilled
// at Rate per Period (equivalently, at most Burst + Rate*W/Period arrivals in
// any window of length W). A request that breaks either is answered 429 at
// once, without latency, and does not take a token.
//
// With TokenRate, it also enforces tokens per period the way OpenAI counts
// them: each chat request costs its estimate (see the package
// documentation) from a second bucket of TokenBurst tokens refilled at
// TokenRate per TokenPeriod, both buckets being GCRA (so at most
// TokenBurst + TokenRate*W/TokenPeriod tokens are charged in any window W,
// the bound sluice keeps). A request whose estimate does not fit is
// answered 429 and takes neither a token nor a request.
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
	// Zero: exact. It applies to both buckets.
	Jitter time.Duration

	// TokenRate is the number of tokens per TokenPeriod. Zero: tokens are
	// not enforced (they are still counted).
	TokenRate int
	// TokenPeriod is the period of TokenRate. Zero: one minute.
	TokenPeriod time.Duration
	// TokenBurst is the token bucket size. Zero: TokenRate.
	TokenBurst int
}

// Enabled reports whether l enforces anything.
func (l Limit) Enabled() bool { return l.Concurrency > 0 || l.Rate > 0 || l.TokenRate > 0 }

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

// TokensPerSecond returns the token refill rate in tokens per second (0
// when TokenRate is not enforced).
func (l Limit) TokensPerSecond() float64 {
	if l.TokenRate <= 0 {
		return 0
	}
	return float64(l.TokenRate) / l.tokenPeriod().Seconds()
}

func (l Limit) tokenPeriod() time.Duration {
	if l.TokenPeriod <= 0 {
		return time.Minute
	}
	return l.TokenPeriod
}

func (l Limit) tokenBurst() int {
	if l.TokenBurst <= 0 {
		return l.TokenRate
	}
	return l.TokenBurst
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
		o.Limit.Period < 0 || o.Limit.Jitter < 0 ||
		o.Limit.TokenRate < 0 || o.Limit.TokenPeriod < 0 || o.Limit.TokenBurst < 0:
		return errors.New("mockvendor: negative Limit field")
	case o.DefaultMaxTokens < 0 || o.CompletionTokens < 0:
		return errors.New("mockvendor: negative DefaultMaxTokens or CompletionTokens")
	case !(o.CompletionFraction >= 0 && o.CompletionFraction <= 1000): // also rejects NaN
		return fmt.Errorf("mockvendor: CompletionFraction %v is not in [0,1000]", o.CompletionFraction)
	case o.Outage.Start < 0 || o.Outage.Duration < 0:
		return errors.New("mockvendor: negative Outage field")
	case o.Outage.Status != 0 && (o.Outage.Status < 400 || o.Outage.Status > 599):
		return fmt.Errorf("mockvendor: Outage.Status %d is not in 400-599", o.Outage.Status)
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
