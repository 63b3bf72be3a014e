package semaphore

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/scripts"
)

// keep renews this replica's leases and queue places, all in one script call
// per round: waiters every WaiterTTL/4, leases every LeaseTTL/3. A lease that
// Redis no longer has is ended as lost; a waiter that lost its place is woken
// to queue again.
func (s *Semaphore) keep(ctx context.Context) {
	defer s.bg.Done()
	t := time.NewTicker(s.opt.WaiterTTL / 4)
	defer t.Stop()
	var leasesDue time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var leases, waiters []string
		s.mu.Lock()
		if !now.Before(leasesDue) {
			for id := range s.leases {
				leases = append(leases, id)
			}
		}
		for id, w := range s.waiters {
			if w.queued {
				waiters = append(waiters, id)
			}
		}
		s.mu.Unlock()
		if len(leases) == 0 && len(waiters) == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, s.opt.WaiterTTL/2)
		sent := time.Now()
		lostLeases, lostWaiters, err := s.keepalive(rctx, leases, waiters)
		cancel()
		if err != nil {
			continue // leases end by their local deadline if this persists
		}
		if len(leases) > 0 {
			leasesDue = sent.Add(s.opt.LeaseTTL / 3)
		}
		s.mu.Lock()
		renewed := make([]*Lease, 0, len(leases))
		for _, id := range leases {
			if l := s.leases[id]; l != nil && !lostLeases[id] {
				renewed = append(renewed, l)
			}
		}
		lost := make([]*Lease, 0, len(lostLeases))
		for id := range lostLeases {
			if l := s.leases[id]; l != nil {
				lost = append(lost, l)
			}
		}
		for id := range lostWaiters {
			if w := s.waiters[id]; w != nil {
				w.queued = false
				notify(w.wake)
			}
		}
		s.mu.Unlock()
		for _, l := range renewed {
			l.extend(sent)
		}
		for _, l := range lost {
			l.end(ErrLeaseLost)
		}
	}
}

// keepalive runs keepalive.lua and returns the ids Redis no longer had.
func (s *Semaphore) keepalive(ctx context.Context, leases, waiters []string) (lostLeases, lostWaiters map[string]bool, err error) {
	args := make([]any, 0, 4+len(leases)+len(waiters))
	args = append(args, s.opt.LeaseTTL.Microseconds(), s.opt.WaiterTTL.Microseconds(), s.channel, len(leases))
	for _, id := range leases {
		args = append(args, id)
	}
	for _, id := range waiters {
		args = append(args, id)
	}
	res, err := scripts.Keepalive.Run(ctx, s.rdb, s.keys[:3], args...).Slice()
	if err != nil {
		return nil, nil, fmt.Errorf("semaphore: keepalive: %w", err)
	}
	if len(res) != 2 {
		return nil, nil, fmt.Errorf("semaphore: keepalive: unexpected reply %v", res)
	}
	return idSet(res[0]), idSet(res[1]), nil
}

func idSet(v any) map[string]bool {
	list, _ := v.([]any)
	set := make(map[string]bool, len(list))
	for _, id := range list {
		if s, ok := id.(string); ok {
			set[s] = true
		}
	}
	return set
}
