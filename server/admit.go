package server

import (
	"context"

	"github.com/sluicehq/sluice/semaphore"
)

// Admitter admits vendor calls against the shared budget: one Acquire takes
// one token of the cluster bucket AND one slot of the cluster semaphore,
// together (invariant I2: the token is spent when the call really goes).
// The gateway uses the Redis semaphore of package semaphore; tests use fakes.
type Admitter interface {
	// Acquire waits for a token and a slot, first come first served across
	// replicas. ctx's deadline is the queue deadline: when the slot cannot
	// be had before it, Acquire fails with an error matching
	// ErrQueueTimeout, early if that is known in advance; matching
	// ErrUnavailable too if the store did not answer by then. When ctx is
	// cancelled it returns ctx's error. Any other error means the shared
	// store is failing, and the gateway fails closed.
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
	// even when ctx is already cancelled.
	Release(ctx context.Context) error
}

// ErrQueueTimeout is matched (errors.Is) by Admitter errors that mean the
// call could not start within the queue deadline. It is the semaphore's own
// sentinel, so the semaphore's errors need no translation.
var ErrQueueTimeout = semaphore.ErrQueueTimeout

// ErrUnavailable is matched by Admitter errors of the store itself
// (unreachable, failing, not answering in time), also together with
// ErrQueueTimeout. It is the semaphore's own sentinel.
var ErrUnavailable = semaphore.ErrUnavailable
