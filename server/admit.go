package server

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/semaphore"
)

// admitter admits vendor calls against the shared budget: one Acquire takes
// one token of the cluster bucket AND one slot of the cluster semaphore,
// together (invariant I2: the token is spent when the call really goes).
// The gateway uses the Redis semaphore of package semaphore; tests use fakes.
type admitter interface {
	// Acquire waits for a token and a slot, first come first served across
	// replicas. ctx's deadline is the queue deadline: when the slot cannot
	// be had before it, Acquire fails with an error matching
	// semaphore.ErrQueueTimeout, early if that is known in advance; matching
	// semaphore.ErrUnavailable too if the store did not answer by then (the
	// semaphore's own sentinels, so its errors need no translation). When ctx is
	// cancelled it returns ctx's error. Any other error means the shared
	// store is failing, and the gateway fails closed.
	Acquire(ctx context.Context) (vendorLease, error)
	// Check reports whether admission works: the store is reachable and
	// its scripts run.
	Check(ctx context.Context) error
	// Close releases every lease still held and stops background work.
	Close() error
}

// vendorLease is one admitted vendor call: a slot of the semaphore, held until
// Release.
type vendorLease interface {
	// Context is cancelled when the lease is lost (expired, taken over) or
	// released; the vendor call's context derives from it.
	Context() context.Context
	// Held reports whether the lease is still held, conservatively.
	Held() bool
	// Release gives the slot back. It is idempotent and shielded: it runs
	// even when ctx is already cancelled, with its own short deadline.
	Release(ctx context.Context) error
}

// semaphoreAdmitter is the admitter of sluice serve: the cluster lease
// semaphore of package semaphore, whose Acquire also takes a token of the
// budget's bucket in the same script.
type semaphoreAdmitter struct{ *semaphore.Semaphore }

func newSemaphoreAdmitter(rdb redis.UniversalClient, cfg Config) (admitter, error) {
	sem, err := semaphore.New(rdb, cfg.Budget, semaphore.Options{Size: cfg.Concurrency, LeaseTTL: cfg.LeaseTTL, Rate: cfg.Rate})
	if err != nil {
		return nil, err
	}
	return semaphoreAdmitter{sem}, nil
}

// Acquire returns the semaphore's lease as a vendorLease (and a nil interface on
// error, not a typed nil).
func (a semaphoreAdmitter) Acquire(ctx context.Context) (vendorLease, error) {
	l, err := a.Semaphore.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// admit takes a token and a slot within the queue deadline. The admitter's
// outcomes are complete, so this only sorts them: the request ended, the
// store failed, or the queue deadline passed.
func (s *gateway) admit(ctx context.Context, rec *record) (vendorLease, *failure) {
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
	case errors.Is(err, semaphore.ErrUnavailable):
		// The store failed, or did not answer a call before the deadline.
		// (A store that goes silent while a request only waits shows as a
		// queue timeout: 503 all the same, and /readyz turns red.)
		return nil, s.storeFailed(rec, err)
	case errors.Is(err, semaphore.ErrQueueTimeout):
		s.metrics.admissions.WithLabelValues("queue_timeout").Inc()
		return nil, &failure{answer: errQueueTimeout(s.cfg.QueueTimeout)}
	default:
		return nil, s.storeFailed(rec, err)
	}
}

// storeFailed fails a request closed because the store did not answer.
func (s *gateway) storeFailed(rec *record, err error) *failure {
	s.metrics.admissions.WithLabelValues("error").Inc()
	s.metrics.redisErrors.WithLabelValues("admit").Inc()
	s.log.Warn("admission failed: failing closed", "request_id", rec.requestID, "error", err)
	return &failure{answer: errBackend(s.cfg.QueueTimeout)}
}
