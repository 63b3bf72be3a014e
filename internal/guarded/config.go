// Package guarded is the guarded vendor call that package guard exports and
// the gateway (package server) is built on: per attempt the queue deadline,
// admission, the call deadline bound to the lease, the vendor's HTTP
// transport; retries with full jitter outside the slot; the cancel grace;
// shielded release; metrics. It is one implementation, used twice.
package guarded

import (
	"time"

	"github.com/sluicehq/sluice/limiter"
)

// DefaultRateSpec is the default vendor rate as sluice serve writes it.
const DefaultRateSpec = "60/m"

// DefaultRate is DefaultRateSpec, burst 1.
var DefaultRate = func() limiter.Limit {
	l, err := limiter.ParseLimit(DefaultRateSpec)
	if err != nil {
		panic(err) // a constant
	}
	return l
}()

// The defaults of a guarded call: those of sluice serve, and of the zero
// fields of guard.Options. The gateway's table of variables is built from
// them, so there is one table of defaults, not two copies.
// The defaults of a guarded call (see DefaultRate).
const (
	DefaultConcurrency     = 3
	DefaultQueueTimeout    = 5 * time.Second
	DefaultCallTimeout     = 30 * time.Second
	DefaultMaxAttempts     = 3
	DefaultLeaseTTL        = 15 * time.Second
	DefaultCancelGrace     = 250 * time.Millisecond
	DefaultBackoffBase     = 250 * time.Millisecond
	DefaultBackoffMax      = 10 * time.Second
	DefaultConnectTimeout  = 5 * time.Second
	DefaultMaxRequestBody  = 4 << 20
	DefaultMaxResponseBody = 32 << 20
)

// Config configures a Transport; WithDefaults fills its zero fields.
type Config struct {
	// Concurrency sizes the connection pool: one replica never needs more
	// connections than the calls the budget lets it make.
	Concurrency int
	// QueueTimeout bounds each attempt's wait for admission.
	QueueTimeout time.Duration
	// CallTimeout bounds each attempt, from sending to the last byte of the
	// answer, streams included.
	CallTimeout time.Duration
	// MaxAttempts is the most attempts per request (1: no retries).
	MaxAttempts int
	// CancelGrace holds the slot of a call cancelled at the vendor this
	// long; zero means the default, negative means off.
	CancelGrace time.Duration
	// BackoffBase and BackoffMax shape the full-jitter backoff.
	BackoffBase, BackoffMax time.Duration
	// ConnectTimeout bounds dialling the vendor and the TLS handshake.
	ConnectTimeout time.Duration
	// MaxRequestBody bounds the buffer that makes a request body without
	// GetBody replayable; a larger body is sent once, never retried.
	MaxRequestBody int64
	// MaxResponseBody bounds a non-streaming answer, read whole before the
	// lease is released.
	MaxResponseBody int64
}

// WithDefaults returns c with its zero fields set to the defaults, and a
// negative CancelGrace set to zero (off).
func (c Config) WithDefaults() Config {
	set := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	set(&c.QueueTimeout, DefaultQueueTimeout)
	set(&c.CallTimeout, DefaultCallTimeout)
	set(&c.BackoffBase, DefaultBackoffBase)
	set(&c.BackoffMax, max(DefaultBackoffMax, c.BackoffBase))
	set(&c.ConnectTimeout, DefaultConnectTimeout)
	set(&c.CancelGrace, DefaultCancelGrace)
	if c.CancelGrace < 0 {
		c.CancelGrace = 0
	}
	if c.MaxRequestBody <= 0 {
		c.MaxRequestBody = DefaultMaxRequestBody
	}
	if c.MaxResponseBody <= 0 {
		c.MaxResponseBody = DefaultMaxResponseBody
	}
	return c
}
