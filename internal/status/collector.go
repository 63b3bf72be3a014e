package status

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The metrics of Collector. Every replica exports the same cluster-wide
// values: aggregate them with max by (budget), never sum.
var (
	descLeases = prometheus.NewDesc("sluice_cluster_leases",
		"Live leases (vendor calls admitted), cluster-wide, at the last sample.", []string{"budget"}, nil)
	descCapacity = prometheus.NewDesc("sluice_cluster_capacity",
		"Slots of the budget's semaphore (the vendor's concurrency C).", []string{"budget"}, nil)
	descQueue = prometheus.NewDesc("sluice_cluster_queue_depth",
		"Callers queued for the budget, cluster-wide, at the last sample.", []string{"budget"}, nil)
	descReplicas = prometheus.NewDesc("sluice_cluster_replicas",
		"Replicas alive at the last sample: with queued callers (a live heartbeat) or live leases.", []string{"budget"}, nil)
	descRate = prometheus.NewDesc("sluice_cluster_rate_per_second",
		"The budget's configured request rate, per second (budgets with a rate).", []string{"budget"}, nil)
	descTokens = prometheus.NewDesc("sluice_cluster_tokens_available",
		"Tokens in the budget's bucket at the last sample (budgets with a rate).", []string{"budget"}, nil)
	descNext = prometheus.NewDesc("sluice_cluster_next_grant_seconds",
		"Time until the bucket has a token for the next grant, 0 when it has one, at the last sample (budgets with a rate).", []string{"budget"}, nil)
	descGrants = prometheus.NewDesc("sluice_cluster_grants_total",
		"Grants of the budget, cluster-wide, as counted in Redis by the admission scripts (it restarts from 0 after a day or two without use).", []string{"budget"}, nil)
	descAge = prometheus.NewDesc("sluice_status_sample_age_seconds",
		"Time since the last good sample of the cluster state (since the start when there is none).", nil, nil)
	descErrors = prometheus.NewDesc("sluice_status_sample_errors_total",
		"Samples of the cluster state that failed (Redis unreachable or too slow).", nil, nil)
)

// Collector returns a prometheus.Collector of the cluster-wide gauges, read
// from the samples (a scrape never reaches Redis). The capacity, rate,
// sample age and error count are there from the start; the other gauges
// from the first good sample on, and then they keep the last good values
// (sluice_status_sample_age_seconds says how old they are).
func (s *Status) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Status }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeases, descCapacity, descQueue, descReplicas, descRate, descTokens, descNext, descGrants, descAge, descErrors} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	since := s.start
	if len(s.ring) > 0 {
		since = s.tookAt
	}
	ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, time.Since(since).Seconds())
	ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(s.errors))
	for i, b := range s.budgets {
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, b.Name)
		}
		gauge(descCapacity, float64(b.Concurrency))
		if b.interval > 0 {
			gauge(descRate, 1e6/float64(b.interval))
		}
		if len(s.ring) == 0 {
			continue
		}
		p := s.ring[len(s.ring)-1].points[i]
		gauge(descLeases, float64(p.leases))
		gauge(descQueue, float64(p.queue))
		gauge(descReplicas, float64(len(p.replicas)))
		if p.tokens >= 0 {
			gauge(descTokens, float64(p.tokens))
			gauge(descNext, float64(p.next)/1e6)
		}
		if b.counted {
			ch <- prometheus.MustNewConstMetric(descGrants, prometheus.CounterValue, float64(max(p.grants, 0)), b.Name)
		}
	}
}
