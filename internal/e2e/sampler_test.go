package e2e

import (
	"context"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
)

// sample is the vendor's arrival count at a moment of its own clock.
type sample struct {
	at       time.Duration // vendor's elapsed time since its reset
	arrivals int64
}

// sampler reads the vendor's arrival count every interval, to see the
// throughput and the pauses of the arrivals over time, at the vendor.
type sampler struct {
	mu      sync.Mutex
	samples []sample
	errs    int
	cancel  context.CancelFunc
	done    chan struct{}
}

// stop stops sampling and waits until it stopped.
func (s *sampler) stop() {
	s.cancel()
	<-s.done
}

func startSampler(stats *mockvendor.Client, interval time.Duration) *sampler {
	ctx, stop := context.WithCancel(context.Background())
	s := &sampler{cancel: stop, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			// window=0: the cheapest maximum for the vendor to compute.
			rep, err := stats.StatsWindow(ctx, 0)
			s.mu.Lock()
			if err == nil {
				s.samples = append(s.samples, sample{
					at:       time.Duration(rep.ElapsedSeconds * float64(time.Second)),
					arrivals: rep.Arrivals,
				})
			} else if ctx.Err() == nil {
				s.errs++
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops sampling and returns the samples, and how many reads failed.
func (s *sampler) finish() ([]sample, int) {
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples, s.errs
}

// rate returns the arrivals per second between the vendor times from and
// to, over the samples closest inside that interval, and the interval it
// measured.
func rate(samples []sample, from, to time.Duration) (float64, time.Duration) {
	var a, b *sample
	for i := range samples {
		s := &samples[i]
		if s.at >= from && a == nil {
			a = s
		}
		if s.at <= to {
			b = s
		}
	}
	if a == nil || b == nil || b.at <= a.at {
		return 0, 0
	}
	d := b.at - a.at
	return float64(b.arrivals-a.arrivals) / d.Seconds(), d
}

// longestPause returns the longest time between two arrivals at the vendor
// within [from, to], as bounded from above by the samples (the true pause
// is shorter by up to two sampling intervals), and where it began.
func longestPause(samples []sample, from, to time.Duration) (pause, at time.Duration) {
	// last is the latest sample before the last arrival seen: the arrival
	// happened after it.
	var last *sample
	for i := 1; i < len(samples); i++ {
		prev, s := &samples[i-1], &samples[i]
		if s.at < from || prev.at > to || s.arrivals == prev.arrivals {
			continue
		}
		if last != nil && s.at-last.at > pause {
			pause, at = s.at-last.at, last.at
		}
		last = prev
	}
	return pause, at
}

// perStep returns the arrivals in each step of vendor time from 0 to the
// last sample, as far as the samples tell (an arrival counts in the step
// of the first sample that saw it).
func perStep(samples []sample, step time.Duration) []int64 {
	if len(samples) == 0 {
		return nil
	}
	out := make([]int64, int(samples[len(samples)-1].at/step)+1)
	for i := 1; i < len(samples); i++ {
		out[int(samples[i].at/step)] += samples[i].arrivals - samples[i-1].arrivals
	}
	return out
}
