package server

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/guarded"
	"github.com/sluicehq/sluice/semaphore"
)

// admitter admits vendor calls against the shared budget: one Acquire takes
// one token of the cluster bucket AND one slot of the cluster semaphore,
// together. The gateway uses the Redis semaphore of package semaphore;
// tests use fakes.
type admitter = guarded.Admitter

// vendorLease is one admitted vendor call: a slot of the semaphore, held
// until Release.
type vendorLease = guarded.Lease

// newSemaphoreAdmitter is the admitter of sluice serve: the cluster lease
// semaphore of package semaphore, whose Acquire also takes a token of the
// budget's bucket in the same script.
func newSemaphoreAdmitter(rdb redis.UniversalClient, cfg Config) (admitter, error) {
	sem, err := semaphore.New(rdb, cfg.Budget, semaphore.Options{Size: cfg.Concurrency, LeaseTTL: cfg.LeaseTTL, Rate: cfg.Rate})
	if err != nil {
		return nil, err
	}
	return guarded.Semaphore{Semaphore: sem}, nil
}

// gatewayAdmitter is the gateway's admitter as its guard transport sees
// it: whatever s.adm is when a call is admitted.
type gatewayAdmitter struct{ s *gateway }

func (a gatewayAdmitter) Acquire(ctx context.Context) (vendorLease, error) {
	return a.s.adm.Acquire(ctx)
}
func (a gatewayAdmitter) Check(ctx context.Context) error { return a.s.adm.Check(ctx) }
func (a gatewayAdmitter) Close() error                    { return a.s.adm.Close() }

// storeFailed fails a request closed because the store did not answer.
func (s *gateway) storeFailed(rec *record, err error) *apiError {
	s.log.Warn("admission failed: failing closed", "request_id", rec.requestID, "error", err)
	return errBackend(s.cfg.QueueTimeout)
}
