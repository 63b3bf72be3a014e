package mockvendor

import (
	"cmp"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Request headers that force the behaviour of one request.
const (
	// HeaderStatus forces the answer's status, e.g. "503" or "429" (after
	// the latency). "200" answers normally and skips the random errors.
	HeaderStatus = "X-Mock-Status"
	// HeaderLatency overrides the latency with a Go duration, e.g. "200ms".
	HeaderLatency = "X-Mock-Latency"
	// HeaderStreamCut set to "1" cuts the answer mid-body (mid-stream for
	// streams) by aborting the connection; "0" never cuts.
	HeaderStreamCut = "X-Mock-Stream-Cut"
	// HeaderCompletionTokens overrides the completion_tokens of the
	// answer's usage, e.g. "3000", making the real usage of one request
	// higher or lower than its estimate.
	HeaderCompletionTokens = "X-Mock-Completion-Tokens"
)

// maxBody bounds the request bodies the vendor reads.
const maxBody = 4 << 20

// Vendor is a fake OpenAI-compatible vendor that measures what it receives.
// It is an http.Handler and safe for concurrent use; see the package
// documentation for its endpoints.
type Vendor struct {
	opt Options
	rec *recorder
}

// New returns a Vendor configured by opt, or the error of opt.Validate.
func New(opt Options) (*Vendor, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	if opt.RetryAfter == 0 {
		opt.RetryAfter = DefaultRetryAfter
	}
	if opt.StreamChunks == 0 {
		opt.StreamChunks = DefaultStreamChunks
	}
	if opt.MaxRecords == 0 {
		opt.MaxRecords = DefaultMaxRecords
	}
	if opt.DefaultMaxTokens == 0 {
		opt.DefaultMaxTokens = DefaultMaxTokens
	}
	if opt.Limit.Rate > 0 {
		opt.Limit.Period = opt.Limit.period()
		opt.Limit.Burst = opt.Limit.burst()
	}
	if opt.Limit.TokenRate > 0 {
		opt.Limit.TokenPeriod = opt.Limit.tokenPeriod()
		opt.Limit.TokenBurst = opt.Limit.tokenBurst()
	}
	if opt.Outage.Duration > 0 {
		opt.Outage.Status = cmp.Or(opt.Outage.Status, DefaultOutageStatus)
	}
	return &Vendor{opt: opt, rec: newRecorderWithOutage(opt.Limit, opt.MaxRecords, opt.Outage)}, nil
}

// Options returns the options in effect, defaults filled in.
func (v *Vendor) Options() Options { return v.opt }

// Stats returns a snapshot of the statistics, with the request records.
func (v *Vendor) Stats() Stats { return v.rec.snapshot(true) }

// Reset starts a new epoch: counters, records, the limit's buckets and the
// scheduled Outage start afresh. Requests in flight stay counted in
// InFlight until they end; an outage started with StartOutage goes on.
func (v *Vendor) Reset() { v.rec.reset() }

// StartOutage makes every measured request answer status (400-599) at once
// from now on, for d (zero: until EndOutage); it replaces any outage
// started before.
func (v *Vendor) StartOutage(status int, d time.Duration) error {
	if status < 400 || status > 599 || d < 0 {
		return fmt.Errorf("mockvendor: outage of status %d for %v: want a status in 400-599 and a non-negative duration", status, d)
	}
	v.rec.setOutage(status, d)
	return nil
}

// EndOutage ends the outage now, whether started with StartOutage or
// scheduled by Options.Outage.
func (v *Vendor) EndOutage() { v.rec.setOutage(0, 0) }

// ServeHTTP implements http.Handler.
func (v *Vendor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	case "/stats":
		v.serveStats(w, r)
	case "/stats/reset":
		if r.Method != http.MethodPost {
			writeError(w, http.StatusMethodNotAllowed, "use POST /stats/reset", "method_not_allowed")
			return
		}
		v.Reset()
		w.WriteHeader(http.StatusNoContent)
	case "/outage":
		v.serveOutage(w, r)
	default:
		v.serveVendor(w, r)
	}
}

// serveVendor answers one measured request.
func (v *Vendor) serveVendor(w http.ResponseWriter, r *http.Request) {
	t := v.rec.arrive()
	status, cut := StatusClientGone, false
	defer func() { v.rec.finish(t, status, cut) }()
	// reply ends the request in the stats before its bytes go out, so a
	// client that saw the answer cannot find it still in flight here.
	reply := func(code int) {
		status = code
		v.rec.finish(t, status, cut)
	}
	h := w.Header()
	h.Set("X-Request-Id", fmt.Sprintf("mock-%d", t.seq))
	setRateHeaders(h, t.rl)

	if code := t.outage; code != 0 {
		if code == http.StatusTooManyRequests {
			setRetryAfter(h, v.opt.RetryAfter)
		}
		reply(code)
		writeError(w, code, fmt.Sprintf("mockvendor is down: outage answering %d %s", code, http.StatusText(code)), codeFor(code))
		return
	}
	if t.rejected() {
		ra := v.opt.RetryAfter
		if t.rate {
			ra = t.retryAfter
		}
		setRetryAfter(h, ra)
		reply(http.StatusTooManyRequests)
		writeError(w, http.StatusTooManyRequests, "Rate limit reached (mockvendor limit enforcement).", "rate_limit_exceeded")
		return
	}

	var method string
	switch r.URL.Path {
	case "/v1/chat/completions":
		method = http.MethodPost
	case "/v1/models":
		method = http.MethodGet
	default:
		reply(http.StatusNotFound)
		writeError(w, http.StatusNotFound, fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path), "unknown_url")
		return
	}
	if r.Method != method {
		h.Set("Allow", method)
		reply(http.StatusMethodNotAllowed)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("Method %s not allowed on %s", r.Method, r.URL.Path), "method_not_allowed")
		return
	}
	if v.opt.APIKey != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+v.opt.APIKey)) != 1 {
		reply(http.StatusUnauthorized)
		writeError(w, http.StatusUnauthorized, "Incorrect API key provided.", "invalid_api_key")
		return
	}

	var req chatRequest
	if method == http.MethodPost {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			reply(http.StatusRequestEntityTooLarge)
			writeError(w, http.StatusRequestEntityTooLarge, "Request body too large.", "request_too_large")
			return
		case err != nil:
			return // the client went away
		}
		if err := json.Unmarshal(body, &req); err != nil {
			reply(http.StatusBadRequest)
			writeError(w, http.StatusBadRequest, "We could not parse the JSON body of your request: "+err.Error(), "invalid_json")
			return
		}
	}

	forced, latency, cutMode, err := v.forced(r.Header)
	completionTokens := -1 // from the options
	if s := r.Header.Get(HeaderCompletionTokens); s != "" && err == nil {
		if completionTokens, err = strconv.Atoi(s); err != nil || completionTokens < 0 || completionTokens > maxAllowance {
			err = fmt.Errorf("%s: %q is not a token count in 0-%d", HeaderCompletionTokens, s, maxAllowance)
		}
	}
	if err != nil {
		reply(http.StatusBadRequest)
		writeError(w, http.StatusBadRequest, err.Error(), "invalid_mock_header")
		return
	}
	if method == http.MethodPost {
		est := req.estimate(v.opt.DefaultMaxTokens)
		tv := v.rec.chargeTokens(t, est)
		setRateHeaders(h, t.rl)
		if tv.tokens {
			l := v.opt.Limit
			reply(http.StatusTooManyRequests)
			if tv.tooLarge {
				writeErrorOfType(w, http.StatusTooManyRequests, "tokens", fmt.Sprintf("Request too large for %s on tokens per %v: Limit %d, Requested %d. The input or output tokens must be reduced in order to run successfully.",
					req.model(), l.TokenPeriod, l.TokenBurst, est), "rate_limit_exceeded")
				return
			}
			setRetryAfter(h, tv.retryAfter)
			writeErrorOfType(w, http.StatusTooManyRequests, "tokens", fmt.Sprintf("Rate limit reached for %s on tokens per %v: Limit %d, Remaining %d, Requested %d. Please try again in %s.",
				req.model(), l.TokenPeriod, l.TokenBurst, t.rl.tokRemaining, est, durationHeader(tv.retryAfter)), "rate_limit_exceeded")
			return
		}
	}
	if latency > 0 {
		timer := time.NewTimer(latency)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return // recorded as StatusClientGone
		}
	}

	code := forced
	if code == 0 {
		switch u := rand.Float64(); {
		case u < v.opt.ErrorRate:
			code = http.StatusInternalServerError
		case u < v.opt.ErrorRate+v.opt.RateLimitRate:
			code = http.StatusTooManyRequests
		}
	}
	if code != 0 && code != http.StatusOK {
		if code == http.StatusTooManyRequests {
			setRetryAfter(h, v.opt.RetryAfter)
		}
		reply(code)
		writeError(w, code, fmt.Sprintf("mockvendor answers %d %s", code, http.StatusText(code)), codeFor(code))
		return
	}

	switch {
	case cutMode == cutNever:
		cut = false
	case cutMode == cutAlways:
		cut = true
	default:
		cut = req.Stream && v.opt.StreamCutRate > 0 && rand.Float64() < v.opt.StreamCutRate
	}
	if method == http.MethodGet {
		reply(http.StatusOK)
		writeJSON(w, http.StatusOK, modelList())
		return
	}
	// The answer's usage is settled as it ends: what it used above the
	// estimate is charged then.
	if completionTokens < 0 {
		completionTokens = v.completionTokens(&req)
	}
	u := req.usage(completionTokens)
	reply = func(code int) {
		status = code
		v.rec.settle(t, int64(u.TotalTokens))
		v.rec.finish(t, status, cut)
	}
	if req.Stream {
		status = v.stream(w, r, t.seq, &req, u, cut, reply)
	} else {
		body, _ := json.Marshal(completion(t.seq, &req, v.opt.StreamChunks, u))
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		if cut {
			reply(http.StatusOK)
			w.WriteHeader(http.StatusOK)
			w.Write(body[:len(body)/2])
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}
		reply(http.StatusOK)
		w.Write(body)
	}
}

// completionTokens is the completion_tokens of the usage of an answer to r.
func (v *Vendor) completionTokens(r *chatRequest) int {
	switch {
	case v.opt.CompletionTokens > 0:
		return v.opt.CompletionTokens
	case v.opt.CompletionFraction > 0:
		return int(math.Ceil(v.opt.CompletionFraction * float64(r.allowance(v.opt.DefaultMaxTokens))))
	}
	return v.opt.StreamChunks
}

// setRetryAfter sets Retry-After (whole seconds, rounded up, at least 1)
// and OpenAI's retry-after-ms (at least 1).
func setRetryAfter(h http.Header, d time.Duration) {
	h.Set("Retry-After", strconv.Itoa(secondsCeil(d)))
	h.Set("retry-after-ms", strconv.FormatInt(max(1, int64(math.Ceil(float64(d)/float64(time.Millisecond)))), 10))
}

// setRateHeaders sets OpenAI's x-ratelimit-* headers for the enforced
// buckets: the bucket size, what is left in it and the time until it is
// full again.
func setRateHeaders(h http.Header, s rateState) {
	if s.reqLimit > 0 {
		h.Set("x-ratelimit-limit-requests", strconv.FormatInt(s.reqLimit, 10))
		h.Set("x-ratelimit-remaining-requests", strconv.FormatInt(s.reqRemaining, 10))
		h.Set("x-ratelimit-reset-requests", durationHeader(s.reqReset))
	}
	if s.tokLimit > 0 {
		h.Set("x-ratelimit-limit-tokens", strconv.FormatInt(s.tokLimit, 10))
		h.Set("x-ratelimit-remaining-tokens", strconv.FormatInt(s.tokRemaining, 10))
		h.Set("x-ratelimit-reset-tokens", durationHeader(s.tokReset))
	}
}

// durationHeader writes d as OpenAI does, a Go duration ("1s", "6m0s",
// "20ms"), rounded up to the millisecond.
func durationHeader(d time.Duration) string {
	return (time.Duration(math.Ceil(float64(d)/float64(time.Millisecond))) * time.Millisecond).String()
}

// serveOutage answers POST /outage?for=20s&status=500 (start one; without
// for, until ended) and DELETE /outage (end it), both with 204.
func (v *Vendor) serveOutage(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodDelete:
		v.EndOutage()
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPost:
		q := r.URL.Query()
		status, d := DefaultOutageStatus, time.Duration(0)
		var err error
		if s := q.Get("status"); s != "" {
			if status, err = strconv.Atoi(s); err != nil {
				status = 0
			}
		}
		if s := q.Get("for"); s != "" {
			if d, err = time.ParseDuration(s); err != nil {
				d = -1
			}
		}
		if err := v.StartOutage(status, d); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("status %q and for %q: want a status in 400-599 and a non-negative Go duration", q.Get("status"), q.Get("for")), "invalid_outage")
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "POST, DELETE")
		writeError(w, http.StatusMethodNotAllowed, "use POST or DELETE /outage", "method_not_allowed")
	}
}

// stream writes a streamed completion with usage u and returns the status
// to record.
func (v *Vendor) stream(w http.ResponseWriter, r *http.Request, seq uint64, req *chatRequest, u usage, cut bool, reply func(int)) int {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return StatusClientGone
	}
	n := v.opt.StreamChunks
	for i, c := range chunks(seq, req, n, u) {
		if cut && i == n/2 {
			reply(http.StatusOK)
			panic(http.ErrAbortHandler)
		}
		if i > 0 && i < n && v.opt.StreamInterval > 0 { // pause between content chunks
			timer := time.NewTimer(v.opt.StreamInterval)
			select {
			case <-timer.C:
			case <-r.Context().Done():
				timer.Stop()
				return StatusClientGone
			}
		}
		b, _ := json.Marshal(c)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return StatusClientGone
		}
		if rc.Flush() != nil {
			return StatusClientGone
		}
	}
	reply(http.StatusOK)
	io.WriteString(w, "data: [DONE]\n\n")
	return http.StatusOK
}

// Values of HeaderStreamCut.
const (
	cutRandom = iota
	cutAlways
	cutNever
)

// forced reads the per-request override headers.
func (v *Vendor) forced(h http.Header) (status int, latency time.Duration, cut int, err error) {
	if s := h.Get(HeaderStatus); s != "" {
		status, err = strconv.Atoi(s)
		if err != nil || status < 200 || status > 599 {
			return 0, 0, 0, fmt.Errorf("%s: %q is not a status in 200-599", HeaderStatus, s)
		}
	}
	latency = v.opt.LatencyMin
	if span := v.opt.LatencyMax - v.opt.LatencyMin; span > 0 {
		latency += rand.N(span + 1)
	}
	if s := h.Get(HeaderLatency); s != "" {
		latency, err = time.ParseDuration(s)
		if err != nil || latency < 0 {
			return 0, 0, 0, fmt.Errorf("%s: %q is not a non-negative Go duration", HeaderLatency, s)
		}
	}
	switch s := h.Get(HeaderStreamCut); strings.ToLower(s) {
	case "":
	case "1", "true":
		cut = cutAlways
	case "0", "false":
		cut = cutNever
	default:
		return 0, 0, 0, fmt.Errorf("%s: %q is not 1 or 0", HeaderStreamCut, s)
	}
	return status, latency, cut, nil
}

// serveStats answers GET /stats[?window=1s][&step=100ms].
func (v *Vendor) serveStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "use GET /stats", "method_not_allowed")
		return
	}
	window, step := time.Second, time.Duration(0)
	for name, p := range map[string]*time.Duration{"window": &window, "step": &step} {
		if s := r.URL.Query().Get(name); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %q is not a non-negative Go duration", name, s), "invalid_"+name)
				return
			}
			*p = d
		}
	}
	writeJSON(w, http.StatusOK, v.report(window, step))
}

// report builds the /stats document for a window, with a Series when step
// is positive.
func (v *Vendor) report(window, step time.Duration) Report {
	s := v.rec.snapshot(step > 0)
	n, retained := v.rec.maxInWindow(window)
	status := v.rec.outageNow()
	rep := Report{
		InFlight:    s.InFlight,
		MaxInFlight: s.MaxInFlight,
		Arrivals:    s.Arrivals,
		ByStatus:    s.ByStatus,
		Violations:  s.Violations,
		ViolationsByKind: map[string]int64{
			"concurrency": s.ConcurrencyViolations,
			"rate":        s.RateViolations,
			"tokens":      s.TokenViolations,
		},
		TokenArrivals:     s.TokenArrivals,
		TokensSettled:     s.TokensSettled,
		TokensUsed:        s.TokensUsed,
		MaxTokensInWindow: v.rec.maxTokensInWindow(window),
		OutageAnswers:     s.OutageAnswers,
		OutageActive:      status != 0,
		OutageStatus:      status,
		StreamCuts:        s.StreamCuts,
		Window:            window.String(),
		WindowSeconds:     window.Seconds(),
		MaxInWindow:       n,
		ElapsedSeconds:    s.Elapsed.Seconds(),
		MeanOKLatencyMS:   float64(s.MeanOKLatency) / float64(time.Millisecond),
		Retained:          retained,
		Dropped:           s.Dropped,
	}
	if pts, step := s.Series(step, window); len(pts) > 0 {
		rep.SeriesStepSeconds = step.Seconds()
		rep.Series = make([]SeriesPoint, len(pts))
		for i, p := range pts {
			rep.Series[i] = SeriesPoint{AtSeconds: p.At.Seconds(), Arrivals: p.Arrivals, MaxInFlight: p.MaxInFlight, MaxInWindow: p.MaxInWindow}
		}
	}
	if l := v.opt.Limit; l.Enabled() {
		rep.Limit = &LimitReport{
			Concurrency:   l.Concurrency,
			Rate:          l.Rate,
			PeriodSeconds: l.period().Seconds(),
			Burst:         l.burst(),
			JitterMS:      float64(l.Jitter) / float64(time.Millisecond),
		}
		if l.TokenRate > 0 {
			rep.Limit.TokenRate = l.TokenRate
			rep.Limit.TokenPeriodSeconds = l.tokenPeriod().Seconds()
			rep.Limit.TokenBurst = l.tokenBurst()
		}
	}
	return rep
}

// Report is the JSON document served by GET /stats; its fields mirror Stats.
type Report struct {
	// InFlight and MaxInFlight are Stats.InFlight and Stats.MaxInFlight.
	InFlight    int `json:"in_flight"`
	MaxInFlight int `json:"max_in_flight"`
	// Arrivals and ByStatus (keyed by the status as a string) count the
	// requests of the epoch.
	Arrivals int64         `json:"arrivals"`
	ByStatus map[int]int64 `json:"by_status"`
	// Violations counts the 429s of the enforced limit; ViolationsByKind
	// splits the broken limits into "concurrency", "rate" and "tokens".
	Violations       int64            `json:"violations"`
	ViolationsByKind map[string]int64 `json:"violations_by_kind"`
	// StreamCuts counts answers cut on purpose.
	StreamCuts int64 `json:"stream_cuts"`
	// TokenArrivals, TokensSettled and TokensUsed are Stats'.
	TokenArrivals int64 `json:"token_arrivals"`
	TokensSettled int64 `json:"tokens_settled"`
	TokensUsed    int64 `json:"tokens_used"`
	// MaxTokensInWindow is Stats.MaxTokensInWindow(Window).
	MaxTokensInWindow int64 `json:"max_tokens_in_window"`
	// OutageAnswers counts the requests answered by an outage;
	// OutageActive says whether one is on now, answering OutageStatus.
	OutageAnswers int64 `json:"outage_answers"`
	OutageActive  bool  `json:"outage_active"`
	OutageStatus  int   `json:"outage_status,omitempty"`
	// Window (a Go duration) and WindowSeconds are the window of
	// MaxInWindow, the most arrivals in any closed window of that length.
	Window        string  `json:"window"`
	WindowSeconds float64 `json:"window_seconds"`
	MaxInWindow   int     `json:"max_in_window"`
	// ElapsedSeconds is the time since the epoch began.
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	// MeanOKLatencyMS is the mean arrival-to-end time of 2xx answers.
	MeanOKLatencyMS float64 `json:"mean_ok_latency_ms"`
	// Retained and Dropped count the request records kept and let go.
	Retained int   `json:"retained"`
	Dropped  int64 `json:"dropped"`
	// Limit is the enforced limit, absent when none is.
	Limit *LimitReport `json:"limit,omitempty"`
	// SeriesStepSeconds and Series are Stats.Series at the step asked for
	// with ?step= (perhaps widened), W being the window; absent otherwise.
	SeriesStepSeconds float64       `json:"series_step_seconds,omitempty"`
	Series            []SeriesPoint `json:"series,omitempty"`
}

// SeriesPoint is a Point in a Report.
type SeriesPoint struct {
	AtSeconds   float64 `json:"at_seconds"`
	Arrivals    int     `json:"arrivals"`
	MaxInFlight int     `json:"max_in_flight"`
	MaxInWindow int     `json:"max_in_window"`
}

// LimitReport describes the enforced Limit in a Report.
type LimitReport struct {
	Concurrency   int     `json:"concurrency"`
	Rate          int     `json:"rate"`
	PeriodSeconds float64 `json:"period_seconds"`
	Burst         int     `json:"burst"`
	JitterMS      float64 `json:"jitter_ms"`
	// TokenRate, TokenPeriodSeconds and TokenBurst describe the enforced
	// tokens per period; zero when tokens are not enforced.
	TokenRate          int     `json:"token_rate,omitempty"`
	TokenPeriodSeconds float64 `json:"token_period_seconds,omitempty"`
	TokenBurst         int     `json:"token_burst,omitempty"`
}
