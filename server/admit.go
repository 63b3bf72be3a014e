package server

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

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
	// even when ctx is already cancelled, with its own short deadline.
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

// semaphoreAdmitter is the Admitter of sluice serve: the cluster lease
// semaphore of package semaphore, whose Acquire also takes a token of the
// budget's bucket in the same script.
type semaphoreAdmitter struct{ *semaphore.Semaphore }

func newSemaphoreAdmitter(rdb redis.UniversalClient, cfg Config) (Admitter, error) {
	sem, err := semaphore.New(rdb, cfg.Budget, semaphore.Options{Size: cfg.Concurrency, LeaseTTL: cfg.LeaseTTL, Rate: cfg.Rate})
	if err != nil {
		return nil, err
	}
	return semaphoreAdmitter{sem}, nil
}

// Acquire returns the semaphore's lease as a Lease (and a nil interface on
// error, not a typed nil).
func (a semaphoreAdmitter) Acquire(ctx context.Context) (Lease, error) {
	l, err := a.Semaphore.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// admit takes a token and a slot within the queue deadline. The admitter's
// outcomes are complete, so this only sorts them: the request ended, the
// store failed, or the queue deadline passed.
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
	case errors.Is(err, ErrQueueTimeout):
		s.metrics.admissions.WithLabelValues("queue_timeout").Inc()
		return nil, &failure{answer: errQueueTimeout(s.cfg.QueueTimeout)}
	default:
		return nil, s.storeFailed(rec, err)
	}
}

// storeFailed fails a request closed because the store did not answer.
func (s *Server) storeFailed(rec *record, err error) *failure {
	s.metrics.admissions.WithLabelValues("error").Inc()
	s.metrics.redisErrors.WithLabelValues("admit").Inc()
	s.log.Warn("admission failed: failing closed", "request_id", rec.requestID, "error", err)
	return &failure{answer: errBackend(s.cfg.QueueTimeout)}
}
