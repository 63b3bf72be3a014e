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
		env: func() []string {
			fs, _ := mockVendorFlags()
			return fs.envNames()
		},
	})
}

func runMockVendor(args []string) int {
	opt, listen, code, ok := mockVendorOptions(args)
	if !ok {
		return code
	}
	v, err := mockvendor.New(opt)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sluice mockvendor: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", listen)
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
	fmt.Fprintf(os.Stderr, "sluice mockvendor: stopped; arrivals %d, max in flight %d, violations %d (tokens %d), token arrivals %d, by status %v\n",
		s.Arrivals, s.MaxInFlight, s.Violations, s.TokenViolations, s.TokenArrivals, s.ByStatus)
	return 0
}

// mockVendorOptions parses the flags of sluice mockvendor into the vendor's
// options and the listen address; ok is false when the command should exit
// with code (0 after --help, 2 after an error).
func mockVendorOptions(args []string) (opt mockvendor.Options, listen string, code int, ok bool) {
	fs, build := mockVendorFlags()
	if code, ok := fs.parse(args); !ok {
		return opt, "", code, false
	}
	opt, listen, err := build()
	if err != nil {
		return opt, "", fs.fail("%v", err), false
	}
	return opt, listen, 0, true
}

// mockVendorFlags defines the flags of sluice mockvendor; once they are
// parsed, build turns them into the vendor's options and listen address.
func mockVendorFlags() (fs *toolFlagSet, build func() (mockvendor.Options, string, error)) {
	fs = newToolFlagSet("mockvendor", `Serves POST /v1/chat/completions (plain and "stream": true), GET /v1/models,
GET /stats?window=1s[&step=100ms] (a time series with step), POST
/stats/reset and GET /healthz. Per request, the
headers X-Mock-Status: 503, X-Mock-Latency: 200ms, X-Mock-Stream-Cut: 1 and
X-Mock-Completion-Tokens: 3000 force a status, a latency, a cut answer and
the usage. Answers carry usage and, for
each enforced rate, OpenAI's x-ratelimit-* headers; its 429s Retry-After and
retry-after-ms. POST /outage?for=20s&status=500 starts an outage (without
for: until DELETE /outage ends it).`)
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
	tokenRate := fs.String("token-rate", "", "enforce a token `rate` such as 30000/m, counted as OpenAI does: ceil(characters/4) + max_tokens (else max_completion_tokens, else --default-max-tokens) times n, else 429 (empty: off)", "SLUICE_MOCK_TOKEN_RATE")
	tokenBurst := fs.Int("token-burst", 0, "`B`, bucket size of the enforced tokens (0: the count of --token-rate)", "SLUICE_MOCK_TOKEN_BURST")
	defMax := fs.Int("default-max-tokens", mockvendor.DefaultMaxTokens, "`n`, output allowance of a request without max_tokens or max_completion_tokens", "SLUICE_MOCK_DEFAULT_MAX_TOKENS")
	complTokens := fs.Int("completion-tokens", 0, "`n`, completion_tokens of every answer's usage (0: see --completion-fraction)", "SLUICE_MOCK_COMPLETION_TOKENS")
	complFraction := fs.Float64("completion-fraction", 0, "completion_tokens as this `fraction` of the output allowance, rounded up; above 1 the usage exceeds the estimate (0: the number of stream chunks)", "SLUICE_MOCK_COMPLETION_FRACTION")
	records := fs.Int("max-records", mockvendor.DefaultMaxRecords, "per-request records kept for /stats windows (40 bytes each)", "SLUICE_MOCK_MAX_RECORDS")
	outageAfter := fs.Duration("outage-after", 0, "start an outage this long after the start (and after each POST /stats/reset)", "SLUICE_MOCK_OUTAGE_AFTER")
	outageFor := fs.Duration("outage-for", 0, "length of that outage, during which every request gets --outage-status at once (0: none)", "SLUICE_MOCK_OUTAGE_FOR")
	outageStatus := fs.Int("outage-status", mockvendor.DefaultOutageStatus, "`status` answered during an outage (400-599)", "SLUICE_MOCK_OUTAGE_STATUS")
	return fs, func() (mockvendor.Options, string, error) {
		opt := mockvendor.Options{
			ErrorRate:      *errRate,
			RateLimitRate:  *rlRate,
			RetryAfter:     *retryAfter,
			APIKey:         *key,
			StreamChunks:   *chunks,
			StreamInterval: *interval,
			StreamCutRate:  *cutRate,
			MaxRecords:     *records,
			Limit: mockvendor.Limit{Concurrency: *conc, Burst: *burst, Jitter: *jitter,
				TokenBurst: *tokenBurst},
			DefaultMaxTokens:   *defMax,
			CompletionTokens:   *complTokens,
			CompletionFraction: *complFraction,
			Outage:             mockvendor.Outage{Start: *outageAfter, Duration: *outageFor, Status: *outageStatus},
		}
		fail := func(format string, args ...any) (mockvendor.Options, string, error) {
			return mockvendor.Options{}, "", fmt.Errorf(format, args...)
		}
		var err error
		if opt.LatencyMin, opt.LatencyMax, err = parseLatencyRange(*latency); err != nil {
			return fail("--latency: %v", err)
		}
		if *rate != "" {
			if opt.Limit.Rate, opt.Limit.Period, err = mockvendor.ParseRate(*rate); err != nil {
				return fail("--rate: %v", err)
			}
		}
		for name, v := range map[string]float64{"error-rate": *errRate, "429-rate": *rlRate, "stream-cut-rate": *cutRate} {
			if !(v >= 0 && v <= 1) {
				return fail("--%s %v: want a fraction in [0,1]", name, v)
			}
		}
		if *errRate+*rlRate > 1 {
			return fail("--error-rate plus --429-rate exceeds 1")
		}
		if *chunks < 1 || *records < 1 || *burst < 1 {
			return fail("--stream-chunks, --burst and --max-records must be at least 1")
		}
		if *tokenRate != "" {
			if opt.Limit.TokenRate, opt.Limit.TokenPeriod, err = mockvendor.ParseRate(*tokenRate); err != nil {
				return fail("--token-rate: %v", err)
			}
		}
		if *outageFor > 0 && (*outageStatus < 400 || *outageStatus > 599) {
			return fail("--outage-status %d: want a status in 400-599", *outageStatus)
		}
		if *tokenBurst < 0 || *defMax < 0 || *complTokens < 0 || *outageAfter < 0 || *outageFor < 0 {
			return fail("--token-burst, --default-max-tokens, --completion-tokens, --outage-after and --outage-for must not be negative")
		}
		if _, err := mockvendor.New(opt); err != nil {
			return fail("%v", err)
		}
		return opt, *listen, nil
	}
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
		if l.TokenRate > 0 {
			fmt.Fprintf(&b, " tokens %d/%v burst %d", l.TokenRate, l.TokenPeriod, l.TokenBurst)
		}
	}
	fmt.Fprintf(&b, ", default max_tokens %d", o.DefaultMaxTokens)
	switch {
	case o.CompletionTokens > 0:
		fmt.Fprintf(&b, ", completion tokens %d", o.CompletionTokens)
	case o.CompletionFraction > 0:
		fmt.Fprintf(&b, ", completion tokens %g of the allowance", o.CompletionFraction)
	}
	if o.Outage.Duration > 0 {
		fmt.Fprintf(&b, ", outage of %d from %v for %v", o.Outage.Status, o.Outage.Start, o.Outage.Duration)
	}
	return b.String()
}
