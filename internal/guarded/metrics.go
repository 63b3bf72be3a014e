package guarded

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Prometheus metrics of guarded calls. A Metrics is a
// prometheus.Collector.
type Metrics struct {
	admissions     *prometheus.CounterVec // outcome
	queueWait      prometheus.Histogram
	inflight       prometheus.Gauge
	graceHeld      prometheus.Gauge
	vendorAttempts *prometheus.CounterVec // class
	retries        *prometheus.CounterVec // reason
	redisErrors    *prometheus.CounterVec // op
	own            []prometheus.Collector
}

// NewMetrics returns the metrics of guarded calls. Failed store operations
// (admit, release) are counted in redisErrors, a counter vector with the
// label "op", when it is not nil (the gateway shares its own), else in a
// sluice_redis_errors_total of the Metrics.
func NewMetrics(redisErrors *prometheus.CounterVec) *Metrics {
	m := &Metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_admissions_total",
			Help: "Admission attempts (one token and one slot), by outcome: admitted, queue_timeout, canceled, error.",
		}, []string{"outcome"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_queue_wait_seconds",
			Help:    "Time spent waiting for admission, per attempt, whatever the outcome.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_vendor_inflight",
			Help: "Vendor calls in flight from this replica.",
		}),
		graceHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_cancel_grace_leases",
			Help: "Leases of vendor calls cancelled in flight, held for the cancel grace until the vendor has surely seen the cancellation.",
		}),
		vendorAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_vendor_attempts_total",
			Help: "Vendor attempts sent, by result class: 2xx, 3xx, 4xx, 408, 429, 5xx, timeout, error.",
		}, []string{"class"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_retries_total",
			Help: "Retries scheduled after a failed attempt, by the reason of the failure.",
		}, []string{"reason"}),
		redisErrors: redisErrors,
	}
	m.own = []prometheus.Collector{m.admissions, m.queueWait, m.inflight, m.graceHeld, m.vendorAttempts, m.retries}
	if m.redisErrors == nil {
		m.redisErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_redis_errors_total",
			Help: "Failed operations on the coordination store, by operation: admit, release.",
		}, []string{"op"})
		m.own = append(m.own, m.redisErrors)
	}
	// Every series a dashboard or an alert reads exists, at zero, from the
	// start (an alert on a series that does not exist yet reads "no data").
	ZeroSeries(m.admissions, "admitted", "queue_timeout", "canceled", "error")
	ZeroSeries(m.vendorAttempts, "2xx", "3xx", "4xx", "408", "429", "5xx", "timeout", "error", "canceled")
	ZeroSeries(m.retries, "5xx", "408", "429", "call_timeout", "timeout", "network", "lease_lost")
	ZeroSeries(m.redisErrors, "admit", "release")
	return m
}

// ZeroSeries creates the series of v with each of values as its one label,
// at 0, so that they exist before their first event.
func ZeroSeries(v *prometheus.CounterVec, values ...string) {
	for _, value := range values {
		v.WithLabelValues(value)
	}
}

// Describe sends the descriptors of the metrics.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.own {
		c.Describe(ch)
	}
}

// Collect sends the metrics.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.own {
		c.Collect(ch)
	}
}
