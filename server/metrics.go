package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicehq/sluice/internal/guarded"
)

// metrics are the Prometheus metrics of one gateway, in a registry of its own
// (several servers in one test process must not collide), with the Go and
// process collectors beside them.
type metrics struct {
	reg *prometheus.Registry

	requests        *prometheus.CounterVec   // outcome
	requestDuration *prometheus.HistogramVec // status
	userRejections  prometheus.Counter
	redisErrors     *prometheus.CounterVec // op
	loadRejections  *prometheus.CounterVec // code
	connRejections  *prometheus.CounterVec // action
	panics          prometheus.Counter
	// guard are the metrics of the guarded vendor call: admissions, queue
	// wait, vendor attempts, retries, calls in flight, cancel grace.
	guard *guarded.Metrics
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
	m.guard = guarded.NewMetrics(m.redisErrors)
	guarded.ZeroSeries(m.requests, "ok")
	guarded.ZeroSeries(m.redisErrors, "user_limit", "ready")
	guarded.ZeroSeries(m.loadRejections, "overloaded", "too_many_requests_in_progress")
	guarded.ZeroSeries(m.connRejections, "idle_closed", "refused")
	m.reg.MustRegister(m.requests, m.requestDuration, m.userRejections, m.redisErrors, m.loadRejections, m.connRejections, m.panics,
		m.guard, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
