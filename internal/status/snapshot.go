package status

import (
	"time"
)

// Snapshot is the state a Status shows: what /status.json serves and the
// page draws.
type Snapshot struct {
	// Time is when the snapshot was made, by the replica's clock.
	Time time.Time `json:"time"`
	// IntervalSeconds is the time between two samples.
	IntervalSeconds float64 `json:"interval_seconds"`
	// SampleAgeSeconds is the time since the last good sample was taken,
	// or since the Status started when there is none yet.
	SampleAgeSeconds float64 `json:"sample_age_seconds"`
	// Sampled reports whether there is a good sample at all.
	Sampled bool `json:"sampled"`
	// Error is the error of the latest sample, empty when it succeeded.
	Error string `json:"error,omitempty"`
	// SampleErrors is the number of samples that failed since the start.
	SampleErrors uint64 `json:"sample_errors_total"`
	// Budgets are the budgets, in the order given to New.
	Budgets []BudgetStatus `json:"budgets"`
}

// BudgetStatus is one budget's configuration and its recent samples.
type BudgetStatus struct {
	// Name is the budget's name.
	Name string `json:"name"`
	// Rate is the request rate as configured, e.g. "10/s burst 5", or
	// "unlimited".
	Rate string `json:"rate"`
	// RatePerSecond is the request rate per second; 0 without a rate.
	RatePerSecond float64 `json:"rate_per_second"`
	// Burst is the bucket's size; 0 without a rate.
	Burst int `json:"burst"`
	// Concurrency is the number of slots, cluster-wide (C).
	Concurrency int `json:"concurrency"`
	// GrantsCounted reports whether the budget's grant counter exists in
	// Redis; without it the grant rate is unknown (null).
	GrantsCounted bool `json:"grants_counted"`
	// GrantsPerSecond1m is the grant rate over the samples kept (about
	// the last minute), or null.
	GrantsPerSecond1m *float64 `json:"grants_per_second_1m"`
	// Replicas are the ids of the replicas alive at the last sample: those
	// with queued callers (a live heartbeat) or live leases.
	Replicas []string `json:"replicas"`
	// Samples are the recent samples, oldest first.
	Samples []Point `json:"samples"`
}

// Point is one budget's state at one sample.
type Point struct {
	// T is the sample's Redis time, in Unix milliseconds.
	T int64 `json:"t"`
	// Leases is the number of live leases (calls admitted), against C.
	Leases int `json:"leases"`
	// Queue is the number of callers queued.
	Queue int64 `json:"queue"`
	// Replicas is the number of replicas alive.
	Replicas int `json:"replicas"`
	// Tokens is the number of tokens in the bucket; null without a rate.
	Tokens *int `json:"tokens"`
	// NextTokenSeconds is the time until the bucket has a token (0 when it
	// has one); null without a rate.
	NextTokenSeconds *float64 `json:"next_token_seconds"`
	// GrantsPerSecond is the grant rate since the previous sample; null
	// when unknown (no counter, or the first sample).
	GrantsPerSecond *float64 `json:"grants_per_second"`
}

// Snapshot returns the current state.
func (s *Status) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	snap := Snapshot{
		Time:            now,
		IntervalSeconds: s.opt.Interval.Seconds(),
		Sampled:         len(s.ring) > 0,
		SampleErrors:    s.errors,
	}
	since := s.start
	if snap.Sampled {
		since = s.tookAt
	}
	snap.SampleAgeSeconds = now.Sub(since).Seconds()
	if s.lastErr != nil {
		snap.Error = s.lastErr.Error()
	}
	for i, b := range s.budgets {
		bs := BudgetStatus{
			Name:          b.Name,
			Rate:          b.Rate.String(),
			Concurrency:   b.Concurrency,
			GrantsCounted: b.counted,
			Replicas:      []string{},
			Samples:       make([]Point, 0, len(s.ring)),
		}
		if b.interval > 0 {
			bs.RatePerSecond = 1e6 / float64(b.interval)
			bs.Burst = b.Rate.Burst
		}
		k := 0 // the sample the grant rate of sample j counts from
		for j, smp := range s.ring {
			p := smp.points[i]
			pt := Point{T: smp.now / 1000, Leases: p.leases, Queue: p.queue, Replicas: len(p.replicas)}
			if p.tokens >= 0 {
				tokens, next := p.tokens, float64(p.next)/1e6
				pt.Tokens, pt.NextTokenSeconds = &tokens, &next
			}
			for k+1 < j && smp.now-s.ring[k+1].now >= rateWindow {
				k++
			}
			if j > 0 && b.counted {
				if r, ok := s.grantRate(i, k, j); ok {
					pt.GrantsPerSecond = &r
				}
			}
			bs.Samples = append(bs.Samples, pt)
		}
		if n := len(s.ring); n > 1 && b.counted {
			if r, ok := s.grantRate(i, 0, n-1); ok {
				bs.GrantsPerSecond1m = &r
			}
		}
		if n := len(s.ring); n > 0 {
			bs.Replicas = append(bs.Replicas, s.ring[n-1].points[i].replicas...)
		}
		snap.Budgets = append(snap.Budgets, bs)
	}
	return snap
}

// rateWindow is the shortest time, in microseconds, over which a point's
// grant rate is counted: grants come in bursts, and two samples can be
// close together.
const rateWindow = 1e6

// grantRate is budget i's grant rate from sample k to sample j (k < j),
// summed sample by sample so that a counter reset in between loses little.
func (s *Status) grantRate(i, k, j int) (float64, bool) {
	dt := float64(s.ring[j].now-s.ring[k].now) / 1e6
	if dt <= 0 {
		return 0, false
	}
	var n float64
	for m := k + 1; m <= j; m++ {
		n += grantedBetween(s.ring[m-1].points[i].grants, s.ring[m].points[i].grants)
	}
	return n / dt, true
}

// grantedBetween is the number of grants between two readings of the
// counter (-1: the key was missing). A counter that went down was dropped
// (its TTL) and counted again from zero.
func grantedBetween(prev, cur int64) float64 {
	prev, cur = max(prev, 0), max(cur, 0)
	if cur < prev {
		return float64(cur)
	}
	return float64(cur - prev)
}
