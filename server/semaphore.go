package server

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/semaphore"
)

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
