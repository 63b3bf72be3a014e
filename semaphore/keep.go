package semaphore

import (
	"context"
	"time"
)

// keep renews this replica's leases every LeaseTTL/3 and, while it has
// callers queued, its heartbeat every WaiterTTL/4: each on its own schedule,
// in one script call when both are due. A lease that Redis no longer has is
// ended as lost. If the heartbeat had expired (Redis unreachable for a
// while), every waiter is woken to ask again: it may have lost its place.
func (s *Semaphore) keep(ctx context.Context) {
	defer s.bg.Done()
	leaseEvery, beatEvery := s.opt.LeaseTTL/3, s.opt.WaiterTTL/4
	now := time.Now()
	leaseDue, beatDue := now.Add(leaseEvery), now.Add(beatEvery)
	t := time.NewTimer(min(leaseEvery, beatEvery))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		doLeases, doBeat := !now.Before(leaseDue), !now.Before(beatDue)
		var leases []string
		replica := ""
		s.mu.Lock()
		if doLeases {
			for id := range s.leases {
				leases = append(leases, id)
			}
		}
		if doBeat {
			for _, w := range s.waiters {
				if w.queued {
					replica = s.replica
					break
				}
			}
		}
		s.mu.Unlock()
		timeout := beatEvery * 2
		if doLeases {
			timeout = min(timeout, leaseEvery)
		}
		var err error
		if len(leases) > 0 || replica != "" {
			err = s.renew(ctx, timeout, replica, leases)
		}
		if doLeases {
			leaseDue = now.Add(leaseEvery)
			if err != nil {
				leaseDue = now.Add(leaseEvery / 4) // try again soon
			}
		}
		if doBeat {
			beatDue = now.Add(beatEvery)
		}
		next := leaseDue
		if beatDue.Before(next) {
			next = beatDue
		}
		t.Reset(time.Until(next))
	}
}

// renew runs one keepalive round and applies its answer.
func (s *Semaphore) renew(ctx context.Context, timeout time.Duration, replica string, leases []string) error {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sent := time.Now()
	lost, stale, err := s.st.Keepalive(rctx, s.rdb, replica, leases)
	if err != nil {
		return err // leases end by their local deadline if this persists
	}
	isLost := make(map[string]bool, len(lost))
	for _, id := range lost {
		isLost[id] = true
	}
	s.mu.Lock()
	renewed := make([]*Lease, 0, len(leases))
	ended := make([]*Lease, 0, len(lost))
	for _, id := range leases {
		if l := s.leases[id]; l != nil {
			if isLost[id] {
				ended = append(ended, l)
			} else {
				renewed = append(renewed, l)
			}
		}
	}
	s.mu.Unlock()
	for _, l := range renewed {
		l.extend(sent, s.opt.LeaseTTL)
	}
	for _, l := range ended {
		l.end(ErrLeaseLost)
	}
	if stale {
		s.wakeAll()
	}
	return nil
}
