package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
)

func init() {
	register("mockvendor", command{
		summary: "run a fake OpenAI-compatible vendor that measures what it receives",
		run:     runMockVendor,
	})
}

func runMockVendor(args []string) int {
	fs := newToolFlagSet("mockvendor", `Serves POST /v1/chat/completions (plain and "stream": true), GET /v1/models,
GET /stats?window=1s[&step=100ms] (a time series with step), POST
/stats/reset and GET /healthz. Per request, the
headers X-Mock-Status: 503, X-Mock-Latency: 200ms and X-Mock-Stream-Cut: 1
force a status, a latency and a cut answer.`)
	listen := fs.String("listen", ":9090", "listen `address`", "SLUICE_MOCK_LISTEN")
	latency := fs.String("latency", "0s", "latency per request, uniform in `min-max` (e.g. 50ms-200ms) or fixed (100ms)", "SLUICE_MOCK_LATENCY")
	errRate := fs.Float64("error-rate", 0, "`fraction` of requests answered 500", "SLUICE_MOCK_ERROR_RATE")
	rlRate := fs.Float64("429-rate", 0, "`fraction` of requests answered 429 at random", "SLUICE_MOCK_429_RATE")
	retryAfter := fs.Duration("retry-after", mockvendor.DefaultRetryAfter, "Retry-After of 429s (rounded up to seconds)", "SLUICE_MOCK_RETRY_AFTER")
	key := fs.String("key", "", "require Authorization: Bearer `key` (empty: no auth)", "SLUICE_MOCK_KEY")
	chunks := fs.Int("stream-chunks", mockvendor.DefaultStreamChunks, "content chunks per streamed answer", "SLUICE_MOCK_STREAM_CHUNKS")
	interval := fs.Duration("stream-interval", 0, "pause between streamed chunks", "SLUICE_MOCK_STREAM_INTERVAL")
	cutRate := fs.Float64("stream-cut-rate", 0, "`fraction` of streams cut mid-stream without [DONE]", "SLUICE_MOCK_STREAM_CUT_RATE")
	conc := fs.Int("concurrency", 0, "enforce at most `C` requests in flight, else 429 (0: off)", "SLUICE_MOCK_CONCURRENCY")
	rate := fs.String("rate", "", "enforce a `rate` such as 10/s or 60/m, else 429 (empty: off)", "SLUICE_MOCK_RATE")
	burst := fs.Int("burst", 1, "`B`, bucket size of the enforced rate", "SLUICE_MOCK_BURST")
	jitter := fs.Duration("jitter", mockvendor.DefaultJitter, "forgive arrivals up to this much early under the enforced rate (network jitter between gateway and vendor)", "SLUICE_MOCK_JITTER")
	records := fs.Int("max-records", mockvendor.DefaultMaxRecords, "per-request records kept for /stats windows (24 bytes each)", "SLUICE_MOCK_MAX_RECORDS")
	if code, ok := fs.parse(args); !ok {
		return code
	}

	opt := mockvendor.Options{
		ErrorRate:      *errRate,
		RateLimitRate:  *rlRate,
		RetryAfter:     *retryAfter,
		APIKey:         *key,
		StreamChunks:   *chunks,
		StreamInterval: *interval,
		StreamCutRate:  *cutRate,
		MaxRecords:     *records,
		Limit:          mockvendor.Limit{Concurrency: *conc, Burst: *burst, Jitter: *jitter},
	}
	var err error
	if opt.LatencyMin, opt.LatencyMax, err = parseLatencyRange(*latency); err != nil {
		return fs.fail("--latency: %v", err)
	}
	if *rate != "" {
		if opt.Limit.Rate, opt.Limit.Period, err = mockvendor.ParseRate(*rate); err != nil {
			return fs.fail("--rate: %v", err)
		}
	}
	for name, v := range map[string]float64{"error-rate": *errRate, "429-rate": *rlRate, "stream-cut-rate": *cutRate} {
		if !(v >= 0 && v <= 1) {
			return fs.fail("--%s %v: want a fraction in [0,1]", name, v)
		}
	}
	if *errRate+*rlRate > 1 {
		return fs.fail("--error-rate plus --429-rate exceeds 1")
	}
	if *chunks < 1 || *records < 1 || *burst < 1 {
		return fs.fail("--stream-chunks, --burst and --max-records must be at least 1")
	}
	v, err := mockvendor.New(opt)
	if err != nil {
		return fs.fail("%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sluice mockvendor: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: v, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(os.Stderr, "sluice mockvendor: listening on %s (%s)\n", ln.Addr(), describeMockVendor(v.Options()))
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		fmt.Fprintf(os.Stderr, "sluice mockvendor: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	stop() // a second signal kills at once
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
	}
	s := v.Stats()
	fmt.Fprintf(os.Stderr, "sluice mockvendor: stopped; arrivals %d, max in flight %d, violations %d, by status %v\n",
		s.Arrivals, s.MaxInFlight, s.Violations, s.ByStatus)
	return 0
}

// parseLatencyRange parses "min-max" or a single fixed duration.
func parseLatencyRange(s string) (lo, hi time.Duration, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = time.ParseDuration(strings.TrimSpace(a)); err != nil {
		return 0, 0, fmt.Errorf("%q: want a duration or min-max, e.g. 50ms-200ms", s)
	}
	hi = lo
	if isRange {
		if hi, err = time.ParseDuration(strings.TrimSpace(b)); err != nil {
			return 0, 0, fmt.Errorf("%q: want a duration or min-max, e.g. 50ms-200ms", s)
		}
	}
	if lo < 0 || hi < lo {
		return 0, 0, fmt.Errorf("%q: want 0 <= min <= max", s)
	}
	return lo, hi, nil
}

func describeMockVendor(o mockvendor.Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "latency %v-%v, error rate %g, 429 rate %g, retry-after %v, stream %d chunks every %v, cut rate %g",
		o.LatencyMin, o.LatencyMax, o.ErrorRate, o.RateLimitRate, o.RetryAfter, o.StreamChunks, o.StreamInterval, o.StreamCutRate)
	if o.APIKey != "" {
		b.WriteString(", key required")
	}
	if l := o.Limit; l.Enabled() {
		fmt.Fprintf(&b, ", enforcing C=%d R=%d/%v B=%d jitter %v", l.Concurrency, l.Rate, l.Period, l.Burst, l.Jitter)
	}
	return b.String()
}
