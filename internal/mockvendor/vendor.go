package mockvendor

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	if opt.Limit.Rate > 0 {
		opt.Limit.Period = opt.Limit.period()
		opt.Limit.Burst = opt.Limit.burst()
	}
	return &Vendor{opt: opt, rec: newRecorder(opt.Limit, opt.MaxRecords)}, nil
}

// Options returns the options in effect, defaults filled in.
func (v *Vendor) Options() Options { return v.opt }

// Stats returns a snapshot of the statistics, with the request records.
func (v *Vendor) Stats() Stats { return v.rec.snapshot(true) }

// Reset starts a new epoch: counters, records and the limit's bucket start
// afresh. Requests in flight stay counted in InFlight until they end.
func (v *Vendor) Reset() { v.rec.reset() }

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

	if t.rejected() {
		ra := v.opt.RetryAfter
		if t.rate {
			ra = max(t.retryAfter, time.Second)
		}
		h.Set("Retry-After", strconv.Itoa(secondsCeil(ra)))
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
	if err != nil {
		reply(http.StatusBadRequest)
		writeError(w, http.StatusBadRequest, err.Error(), "invalid_mock_header")
		return
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
			h.Set("Retry-After", strconv.Itoa(secondsCeil(v.opt.RetryAfter)))
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
	switch {
	case method == http.MethodGet:
		reply(http.StatusOK)
		writeJSON(w, http.StatusOK, modelList())
	case req.Stream:
		status = v.stream(w, r, t.seq, &req, cut, reply)
	default:
		body, _ := json.Marshal(completion(t.seq, &req, v.opt.StreamChunks))
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

// stream writes a streamed completion and returns the status to record.
func (v *Vendor) stream(w http.ResponseWriter, r *http.Request, seq uint64, req *chatRequest, cut bool, reply func(int)) int {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return StatusClientGone
	}
	n := v.opt.StreamChunks
	for i, c := range chunks(seq, req, n) {
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
	rep := Report{
		InFlight:    s.InFlight,
		MaxInFlight: s.MaxInFlight,
		Arrivals:    s.Arrivals,
		ByStatus:    s.ByStatus,
		Violations:  s.Violations,
		ViolationsByKind: map[string]int64{
			"concurrency": s.ConcurrencyViolations,
			"rate":        s.RateViolations,
		},
		StreamCuts:      s.StreamCuts,
		Window:          window.String(),
		WindowSeconds:   window.Seconds(),
		MaxInWindow:     n,
		ElapsedSeconds:  s.Elapsed.Seconds(),
		MeanOKLatencyMS: float64(s.MeanOKLatency) / float64(time.Millisecond),
		Retained:        retained,
		Dropped:         s.Dropped,
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
	// splits the broken limits into "concurrency" and "rate".
	Violations       int64            `json:"violations"`
	ViolationsByKind map[string]int64 `json:"violations_by_kind"`
	// StreamCuts counts answers cut on purpose.
	StreamCuts int64 `json:"stream_cuts"`
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
}
