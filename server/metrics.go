package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the Prometheus metrics of one gateway, in a registry of its own
// (several servers in one test process must not collide), with the Go and
// process collectors beside them.
type metrics struct {
	reg *prometheus.Registry

	requests        *prometheus.CounterVec   // outcome
	requestDuration *prometheus.HistogramVec // status
	admissions      *prometheus.CounterVec   // outcome
	queueWait       prometheus.Histogram
	inflight        prometheus.Gauge
	graceHeld       prometheus.Gauge
	vendorAttempts  *prometheus.CounterVec // class
	retries         *prometheus.CounterVec // reason
	userRejections  prometheus.Counter
	redisErrors     *prometheus.CounterVec // op
	loadRejections  *prometheus.CounterVec // code
	connRejections  *prometheus.CounterVec // action
	panics          prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_requests_total",
			Help: "Requests answered, by outcome (ok, vendor_4xx, stream_cut, or the error code answered).",
		}, []string{"outcome"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_request_duration_seconds",
			Help:    "Time from receiving a request to the end of its answer, by HTTP status.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 15),
		}, []string{"status"}),
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
			Help: "Leases of vendor calls cancelled in flight, held for SLUICE_CANCEL_GRACE until the vendor has surely seen the cancellation.",
		}),
		vendorAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_vendor_attempts_total",
			Help: "Vendor attempts sent, by result class: 2xx, 3xx, 4xx, 408, 429, 5xx, timeout, error.",
		}, []string{"class"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_retries_total",
			Help: "Retries scheduled after a failed attempt, by the reason of the failure.",
		}, []string{"reason"}),
		userRejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_user_rejections_total",
			Help: "Requests rejected by the per-user limit (429).",
		}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_redis_errors_total",
			Help: "Failed operations on the coordination store, by operation: admit, release, user_limit, ready.",
		}, []string{"op"}),
		loadRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_load_rejections_total",
			Help: "Requests answered at once because a cap on requests in progress or buffered bytes was reached, by code: overloaded (the replica's, 503), too_many_requests_in_progress (the client's, 429).",
		}, []string{"code"}),
		connRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_connection_limit_total",
			Help: "Connections past SLUICE_MAX_CONNS, by action: idle_closed (an idle connection closed to make room), refused (503).",
		}, []string{"action"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_panics_total",
			Help: "Panics recovered while handling a request.",
		}),
	}
	m.reg.MustRegister(m.requests, m.requestDuration, m.admissions, m.queueWait, m.inflight, m.graceHeld,
		m.vendorAttempts, m.retries, m.userRejections, m.redisErrors, m.loadRejections, m.connRejections, m.panics,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
