package mockvendor

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/invariant"
)

// StatusClientGone is recorded (never sent) for a request whose client went
// away before the answer was complete, after nginx's 499.
const StatusClientGone = 499

// Request is what the vendor recorded about one request under /v1.
type Request struct {
	// Start is the arrival at the handler, as an offset from Stats.Epoch on
	// the monotonic clock.
	Start time.Duration
	// End is when the vendor finished answering, just before the last bytes
	// were written; zero while the request is in flight.
	End time.Duration
	// Status is the answered status, StatusClientGone if the client went
	// away first, and 0 while the request is in flight. A stream cut after
	// its headers counts as 200.
	Status int
	// Tokens is the token estimate of a chat request, charged at Start
	// (zero for other requests, for those refused for their tokens, and for
	// those rejected before their body was read).
	Tokens int64
	// Settled is the part of the answer's usage.total_tokens above Tokens,
	// charged at End.
	Settled int64
}

// Stats is a snapshot of what the vendor observed since its creation or its
// last Reset (the Epoch). Counters are exact; Requests holds only the most
// recent Options.MaxRecords requests, and Dropped says how many older ones
// were let go.
type Stats struct {
	// Epoch is the moment of the last Reset (or of New).
	Epoch time.Time
	// Elapsed is the time from Epoch to the snapshot.
	Elapsed time.Duration
	// InFlight is the number of requests in flight at the snapshot, including
	// those that arrived before the last Reset and are still running.
	InFlight int
	// MaxInFlight is the largest InFlight seen since Epoch (the in-flight
	// count at the Reset included). Every arrival counts, also those the
	// vendor rejects at once for breaking its Limit.
	MaxInFlight int
	// Arrivals counts requests under /v1 that arrived since Epoch.
	Arrivals int64
	// ByStatus counts answered requests by status. Arrivals equals the sum of
	// ByStatus plus the requests of this epoch still in flight.
	ByStatus map[int]int64
	// ConcurrencyViolations and RateViolations count arrivals that broke
	// Options.Limit's concurrency and rate, TokenViolations the requests
	// answered 429 for its tokens; Violations counts the requests answered
	// 429 for any of them (a request breaking two counts once).
	Violations, ConcurrencyViolations, RateViolations, TokenViolations int64
	// TokenArrivals is the sum of the token estimates of the chat requests
	// whose body was read (whatever their answer); TokensSettled the sum of
	// the usage above the estimate charged after answers; TokensUsed the
	// sum of usage.total_tokens of the 2xx chat answers.
	TokenArrivals, TokensSettled, TokensUsed int64
	// OutageAnswers counts the requests answered by an outage.
	OutageAnswers int64
	// StreamCuts counts answers the vendor cut on purpose.
	StreamCuts int64
	// MeanOKLatency is the mean time from arrival to end of the 2xx answers.
	MeanOKLatency time.Duration
	// Requests are the retained requests in arrival order (Start ascending).
	Requests []Request
	// Dropped is the number of arrivals since Epoch whose records were let go
	// to bound memory; MaxInWindow does not see them.
	Dropped int64
}

// MaxInWindow returns the largest number of arrivals (Request.Start) within
// any closed window [t, t+w], sliding over all t: two arrivals exactly w
// apart share a window. It returns 0 for a negative w; for w == 0 it counts
// simultaneous arrivals.
func (s Stats) MaxInWindow(w time.Duration) int {
	if w < 0 || len(s.Requests) == 0 {
		return 0
	}
	starts := make([]time.Duration, len(s.Requests))
	for i, r := range s.Requests {
		starts[i] = r.Start
	}
	return invariant.MaxInWindow(starts, w)
}

// MaxTokensInWindow returns the most tokens charged within any closed
// window [t, t+w]: each retained request's Tokens at its Start and Settled
// at its End. Under an enforced Limit it is at most TokenBurst +
// TokenRate*w/TokenPeriod (plus what Jitter forgives).
func (s Stats) MaxTokensInWindow(w time.Duration) int64 {
	return maxTokensInWindow(tokenEvents(s.Requests), w)
}

// tokenEvent is a charge of tokens at a moment.
type tokenEvent struct {
	at     time.Duration
	tokens int64
}

// tokenEvents lists the token charges of reqs.
func tokenEvents(reqs []Request) []tokenEvent {
	var ev []tokenEvent
	for _, r := range reqs {
		if r.Tokens > 0 {
			ev = append(ev, tokenEvent{r.Start, r.Tokens})
		}
		if r.Settled > 0 && r.Status != 0 { // charged at End, once known
			ev = append(ev, tokenEvent{r.End, r.Settled})
		}
	}
	return ev
}

// maxTokensInWindow is the largest sum of tokens of the events within any
// closed window of length w; ev is sorted in place.
func maxTokensInWindow(ev []tokenEvent, w time.Duration) int64 {
	if w < 0 {
		return 0
	}
	slices.SortFunc(ev, func(a, b tokenEvent) int { return cmp.Compare(a.at, b.at) })
	var best, sum int64
	lo := 0
	for _, e := range ev {
		sum += e.tokens
		for e.at-ev[lo].at > w {
			sum -= ev[lo].tokens
			lo++
		}
		best = max(best, sum)
	}
	return best
}

// verdict is the vendor's decision on an arrival under its Limit.
type verdict struct {
	concurrency, rate bool          // which limits the arrival broke
	tokens, tooLarge  bool          // broke the token limit; cannot ever fit
	retryAfter        time.Duration // suggested wait when rejected
}

func (v verdict) rejected() bool { return v.concurrency || v.rate || v.tokens }

// ticket is a request's handle on the recorder between arrival and end.
type ticket struct {
	seq   uint64
	start time.Duration // offset from the epoch current at arrival
	verdict
	outage  int   // status to answer for an outage; 0: none
	tokens  int64 // the token estimate, once known
	charged bool  // the request took a request token
	rl      rateState
	done    bool
}

// rateState is what the x-ratelimit-* headers of an answer say; a limit of
// zero means the bucket is not enforced.
type rateState struct {
	reqLimit, reqRemaining int64
	reqReset               time.Duration
	tokLimit, tokRemaining int64
	tokReset               time.Duration
}

// gcra is a bucket of burst units refilled one per interval, kept as a
// theoretical arrival time tat (ns from the epoch): full when tat <= now,
// else holding (tau - (tat-now))/interval units, tau being burst*interval.
type gcra struct {
	interval, tau, jitter, tat float64
	burst                      int64
}

func newGCRA(rate int, period time.Duration, burst int, jitter time.Duration) gcra {
	if rate <= 0 {
		return gcra{}
	}
	iv := float64(period) / float64(rate)
	return gcra{interval: iv, tau: float64(burst) * iv, jitter: float64(jitter), burst: int64(burst)}
}

func (g *gcra) enabled() bool { return g.burst > 0 }

// check reports the tat after taking cost units at now, and how early that
// is when the units do not fit (more than jitter early); it changes nothing.
func (g *gcra) check(now time.Duration, cost int64) (tat float64, early time.Duration) {
	t := float64(now)
	tat = max(g.tat, t) + float64(cost)*g.interval
	if e := tat - g.tau - g.jitter - t; e > 0 {
		return tat, time.Duration(e)
	}
	return tat, 0
}

// charge takes cost units at now, fitting or not (a debt delays the next).
func (g *gcra) charge(now time.Duration, cost int64) {
	g.tat = max(g.tat, float64(now)) + float64(cost)*g.interval
}

// state reports the units left at now and the time until the bucket is full.
func (g *gcra) state(now time.Duration) (remaining int64, reset time.Duration) {
	debt := max(g.tat-float64(now), 0)
	return max(int64((g.tau-debt)/g.interval), 0), time.Duration(debt)
}

// recorder holds the counters, the ring of request records and the limit
// enforcement state. One mutex keeps the arrival order, the timestamps and
// the decisions consistent with each other.
type recorder struct {
	limit      Limit
	maxRecords int

	schedule    Outage // the outage of each epoch
	mu          sync.Mutex
	epoch       time.Time
	inFlight    int
	maxInFlight int
	arrivals    int64
	byStatus    map[int]int64
	violations  [4]int64 // total, concurrency, rate, tokens
	tokens      [3]int64 // arrived, settled, used
	outages     int64
	streamCuts  int64
	okSum       time.Duration
	okCount     int64
	recs        []Request // ring; oldest at head once full
	head        int
	firstSeq    uint64 // first seq of this epoch
	nextSeq     uint64
	req, tok    gcra   // the request and token buckets
	manual      outage // the outage started with POST /outage
	sched       Outage // the schedule of this epoch (cut short by an end)
}

// outage is an outage started by hand: on until until (zero: until ended).
type outage struct {
	on     bool
	until  time.Time
	status int
}

func newRecorder(limit Limit, maxRecords int) *recorder {
	return newRecorderWithOutage(limit, maxRecords, Outage{})
}

func newRecorderWithOutage(limit Limit, maxRecords int, o Outage) *recorder {
	r := &recorder{limit: limit, maxRecords: maxRecords, schedule: o}
	r.reset()
	return r
}

// setOutage starts an outage of status now for d (zero: until ended), or
// ends the current one when status is zero.
func (r *recorder) setOutage(status int, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.manual = outage{on: status != 0, status: status}
	if d > 0 {
		r.manual.until = time.Now().Add(d)
	}
	if status == 0 { // ending by hand ends the scheduled one too
		now := time.Since(r.epoch)
		if o := r.sched; o.Duration > 0 && now >= o.Start && now < o.Start+o.Duration {
			r.sched.Duration = now - o.Start
		}
	}
}

// outageNow returns the status of the outage now, 0 when there is none.
func (r *recorder) outageNow() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.outageStatus(time.Since(r.epoch))
}

// outageStatus returns the status of the outage at now, 0 when there is
// none; r.mu is held.
func (r *recorder) outageStatus(now time.Duration) int {
	if m := r.manual; m.on && (m.until.IsZero() || time.Now().Before(m.until)) {
		return m.status
	}
	if o := r.sched; o.Duration > 0 && now >= o.Start && now < o.Start+o.Duration {
		return cmp.Or(o.Status, DefaultOutageStatus)
	}
	return 0
}

// reset starts a new epoch; requests in flight stay counted in inFlight.
func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.epoch = time.Now()
	r.maxInFlight = r.inFlight
	r.arrivals = 0
	r.byStatus = map[int]int64{}
	r.violations = [4]int64{}
	r.tokens, r.outages = [3]int64{}, 0
	r.streamCuts, r.okSum, r.okCount = 0, 0, 0
	r.recs, r.head = r.recs[:0], 0
	r.firstSeq = r.nextSeq
	r.sched = r.schedule
	l := r.limit // full buckets
	r.req = newGCRA(l.Rate, l.period(), l.burst(), l.Jitter)
	r.tok = newGCRA(l.TokenRate, l.tokenPeriod(), l.tokenBurst(), l.Jitter)
}

// arrive records an arrival and decides it under the limit.
func (r *recorder) arrive() *ticket {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Since(r.epoch)
	t := &ticket{seq: r.nextSeq, start: now}
	r.nextSeq++
	r.arrivals++
	r.inFlight++
	r.maxInFlight = max(r.maxInFlight, r.inFlight)
	if len(r.recs) < r.maxRecords {
		r.recs = append(r.recs, Request{Start: now})
	} else {
		r.recs[r.head] = Request{Start: now}
		r.head = (r.head + 1) % len(r.recs)
	}

	if t.outage = r.outageStatus(now); t.outage != 0 {
		r.outages++
		t.rl = r.rateState(now)
		return t
	}
	t.verdict = r.decide(now)
	t.charged = r.req.enabled() && !t.rejected()
	t.rl = r.rateState(now)
	if t.concurrency {
		r.violations[1]++
	}
	if t.rate {
		r.violations[2]++
	}
	if t.rejected() {
		r.violations[0]++
	}
	return t
}

// decide applies the limit to an arrival at now (GCRA: the arrival conforms
// when it is no earlier than tat - (B-1)*T - jitter, T = Period/Rate). The
// bucket is charged only for admitted arrivals.
func (r *recorder) decide(now time.Duration) verdict {
	var v verdict
	if l := r.limit; l.Concurrency > 0 && r.inFlight > l.Concurrency {
		v.concurrency = true
	}
	if !r.req.enabled() {
		return v
	}
	tat, early := r.req.check(now, 1)
	v.rate, v.retryAfter = early > 0, early
	if !v.rejected() {
		r.req.tat = tat
	}
	return v
}

// rateState reads both buckets at now; r.mu is held.
func (r *recorder) rateState(now time.Duration) rateState {
	var s rateState
	if r.req.enabled() {
		s.reqLimit = r.req.burst
		s.reqRemaining, s.reqReset = r.req.state(now)
	}
	if r.tok.enabled() {
		s.tokLimit = r.tok.burst
		s.tokRemaining, s.tokReset = r.tok.state(now)
	}
	return s
}

// chargeTokens records the token estimate of t's request and decides it
// under the token limit at its arrival. A request rejected for its tokens
// gives back its request token: it takes nothing.
func (r *recorder) chargeTokens(t *ticket, est int64) verdict {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.tokens = est
	if t.seq < r.firstSeq {
		return verdict{} // arrived before the last reset: not measured
	}
	r.tokens[0] += est
	var v verdict
	if r.tok.enabled() {
		tat, early := r.tok.check(t.start, est)
		switch {
		case est > r.tok.burst:
			v.tokens, v.tooLarge = true, true
		case early > 0:
			v.tokens, v.retryAfter = true, early
		default:
			r.tok.tat = tat
		}
	}
	if v.tokens {
		r.violations[0]++
		r.violations[3]++
		if t.charged {
			r.req.tat -= r.req.interval
			t.charged = false
		}
		t.tokens = 0 // nothing was charged
	} else if i, ok := r.index(t.seq); ok {
		r.recs[i].Tokens = est
	}
	t.verdict = v
	t.rl = r.rateState(max(t.start, time.Since(r.epoch)))
	return v
}

// settle records the usage of t's 2xx answer and charges what it used
// above the estimate, at now.
func (r *recorder) settle(t *ticket, used int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t.seq < r.firstSeq {
		return
	}
	r.tokens[2] += used
	excess := used - t.tokens
	if excess <= 0 {
		return
	}
	r.tokens[1] += excess
	if i, ok := r.index(t.seq); ok {
		r.recs[i].Settled = excess
	}
	if r.tok.enabled() {
		r.tok.charge(time.Since(r.epoch), excess)
	}
}

// finish records the end of t's request with the given answer. It is
// idempotent, so callers may finish early and defer it as well.
func (r *recorder) finish(t *ticket, status int, cut bool) {
	if t.done {
		return
	}
	t.done = true
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight--
	if t.seq < r.firstSeq {
		return // arrived before the last reset: only its in-flight slot counted
	}
	end := time.Since(r.epoch)
	r.byStatus[status]++
	if cut {
		r.streamCuts++
	}
	if status >= 200 && status < 300 {
		r.okSum += end - t.start
		r.okCount++
	}
	if i, ok := r.index(t.seq); ok {
		r.recs[i].End = end
		r.recs[i].Status = status
	}
}

// index returns the ring position of seq, if it is still retained.
func (r *recorder) index(seq uint64) (int, bool) {
	oldest := r.nextSeq - uint64(len(r.recs))
	if seq < oldest || seq >= r.nextSeq {
		return 0, false
	}
	return (r.head + int(seq-oldest)) % len(r.recs), true
}

// snapshot copies the state; withRequests also copies the records.
func (r *recorder) snapshot(withRequests bool) Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Stats{
		Epoch:                 r.epoch,
		Elapsed:               time.Since(r.epoch),
		InFlight:              r.inFlight,
		MaxInFlight:           r.maxInFlight,
		Arrivals:              r.arrivals,
		ByStatus:              make(map[int]int64, len(r.byStatus)),
		Violations:            r.violations[0],
		ConcurrencyViolations: r.violations[1],
		RateViolations:        r.violations[2],
		TokenViolations:       r.violations[3],
		TokenArrivals:         r.tokens[0],
		TokensSettled:         r.tokens[1],
		TokensUsed:            r.tokens[2],
		OutageAnswers:         r.outages,
		StreamCuts:            r.streamCuts,
		Dropped:               r.arrivals - int64(len(r.recs)),
	}
	for k, v := range r.byStatus {
		s.ByStatus[k] = v
	}
	if r.okCount > 0 {
		s.MeanOKLatency = r.okSum / time.Duration(r.okCount)
	}
	if withRequests {
		s.Requests = make([]Request, 0, len(r.recs))
		s.Requests = append(s.Requests, r.recs[r.head:]...)
		s.Requests = append(s.Requests, r.recs[:r.head]...)
	}
	return s
}

// maxInWindow computes MaxInWindow without copying the records.
func (r *recorder) maxInWindow(w time.Duration) (n, retained int) {
	r.mu.Lock()
	ts := make([]time.Duration, 0, len(r.recs))
	for _, i := range [2][2]int{{r.head, len(r.recs)}, {0, r.head}} {
		for _, rec := range r.recs[i[0]:i[1]] {
			ts = append(ts, rec.Start)
		}
	}
	r.mu.Unlock()
	if w < 0 || len(ts) == 0 {
		return 0, len(ts)
	}
	return invariant.MaxInWindow(ts, w), len(ts)
}

// maxTokensInWindow computes MaxTokensInWindow without copying the records.
func (r *recorder) maxTokensInWindow(w time.Duration) int64 {
	r.mu.Lock()
	ev := tokenEvents(r.recs) // the order of the ring does not matter
	r.mu.Unlock()
	return maxTokensInWindow(ev, w)
}

// secondsCeil rounds d up to whole seconds, at least 1.
func secondsCeil(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

// MaxSeriesPoints bounds the points of a Series: a smaller step is widened
// to Elapsed/MaxSeriesPoints.
const MaxSeriesPoints = 2000

// Point is one step of a Series: what the vendor saw from At to At+Step,
// At being an offset from Stats.Epoch.
type Point struct {
	At time.Duration
	// Arrivals counts the arrivals in the step.
	Arrivals int
	// MaxInFlight is the most retained requests in flight at once during
	// the step (requests that arrived before the epoch are not counted).
	MaxInFlight int
	// MaxInWindow is the most arrivals in a closed window of length W that
	// ends within the step; the largest over all points is MaxInWindow(W).
	MaxInWindow int
}

// Series cuts the retained requests into steps of length step from the
// Epoch to Elapsed, for plots of the budget over time, and returns the
// points and the step used: step itself, or wider where it would make more
// than MaxSeriesPoints points. It returns no point for a non-positive step
// or no request.
func (s Stats) Series(step, w time.Duration) ([]Point, time.Duration) {
	if step <= 0 || len(s.Requests) == 0 {
		return nil, step
	}
	end := s.Elapsed
	for _, r := range s.Requests {
		end = max(end, r.Start, r.End)
	}
	step = max(step, end/MaxSeriesPoints+1)
	pts := make([]Point, int(end/step)+1)
	for i := range pts {
		pts[i].At = time.Duration(i) * step
	}
	// Arrivals, and the densest window ending at each arrival.
	starts := make([]time.Duration, len(s.Requests))
	ends := make([]time.Duration, 0, len(s.Requests))
	for i, r := range s.Requests {
		starts[i] = r.Start
		e := r.End
		if r.Status == 0 {
			e = end // still in flight
		}
		ends = append(ends, e)
	}
	slices.Sort(starts)
	slices.Sort(ends)
	// A window ending at the start of a step holds what it held at the end
	// of the one before; within the step it gains only at arrivals.
	for i := range pts {
		at := pts[i].At
		in, _ := slices.BinarySearch(starts, at+1)
		out, _ := slices.BinarySearch(starts, at-w)
		pts[i].MaxInWindow = in - out
	}
	lo := 0
	for i, t := range starts {
		for t-starts[lo] > w {
			lo++
		}
		p := &pts[t/step]
		p.Arrivals++
		p.MaxInWindow = max(p.MaxInWindow, i-lo+1)
	}
	// In flight: sweep the starts and ends in time order, an end first on
	// a tie; each step starts at the level its predecessor ended with.
	level, cur, si, ei := 0, 0, 0, 0
	for si < len(starts) || ei < len(ends) {
		t, delta := time.Duration(0), 0
		if ei < len(ends) && (si == len(starts) || ends[ei] <= starts[si]) {
			t, delta = ends[ei], -1
			ei++
		} else {
			t, delta = starts[si], 1
			si++
		}
		k := min(int(t/step), len(pts)-1)
		for ; cur < k; cur++ {
			pts[cur+1].MaxInFlight = level
		}
		level += delta
		pts[k].MaxInFlight = max(pts[k].MaxInFlight, level)
	}
	for ; cur < len(pts)-1; cur++ {
		pts[cur+1].MaxInFlight = level
	}
	return pts, step
}
