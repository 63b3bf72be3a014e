package mockvendor

import (
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
	// Options.Limit's concurrency and rate; Violations counts the requests
	// answered 429 for it (a request breaking both counts once).
	Violations, ConcurrencyViolations, RateViolations int64
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

// verdict is the vendor's decision on an arrival under its Limit.
type verdict struct {
	concurrency, rate bool          // which limits the arrival broke
	retryAfter        time.Duration // suggested wait when rejected
}

func (v verdict) rejected() bool { return v.concurrency || v.rate }

// ticket is a request's handle on the recorder between arrival and end.
type ticket struct {
	seq   uint64
	start time.Duration // offset from the epoch current at arrival
	verdict
	done bool
}

// recorder holds the counters, the ring of request records and the limit
// enforcement state. One mutex keeps the arrival order, the timestamps and
// the decisions consistent with each other.
type recorder struct {
	limit      Limit
	maxRecords int

	mu          sync.Mutex
	epoch       time.Time
	inFlight    int
	maxInFlight int
	arrivals    int64
	byStatus    map[int]int64
	violations  [3]int64 // total, concurrency, rate
	streamCuts  int64
	okSum       time.Duration
	okCount     int64
	recs        []Request // ring; oldest at head once full
	head        int
	firstSeq    uint64 // first seq of this epoch
	nextSeq     uint64
	tat         float64 // GCRA theoretical arrival time, ns from epoch
}

func newRecorder(limit Limit, maxRecords int) *recorder {
	r := &recorder{limit: limit, maxRecords: maxRecords}
	r.reset()
	return r
}

// reset starts a new epoch; requests in flight stay counted in inFlight.
func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.epoch = time.Now()
	r.maxInFlight = r.inFlight
	r.arrivals = 0
	r.byStatus = map[int]int64{}
	r.violations = [3]int64{}
	r.streamCuts, r.okSum, r.okCount = 0, 0, 0
	r.recs, r.head = r.recs[:0], 0
	r.firstSeq = r.nextSeq
	r.tat = 0 // a full bucket
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

	t.verdict = r.decide(now)
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
	l := r.limit
	if l.Concurrency > 0 && r.inFlight > l.Concurrency {
		v.concurrency = true
	}
	var interval, tat float64
	if l.Rate > 0 {
		interval = float64(l.period()) / float64(l.Rate)
		tolerance := float64(l.burst()-1)*interval + float64(l.Jitter)
		t := float64(now)
		if early := r.tat - tolerance - t; early > 0 {
			v.rate = true
			v.retryAfter = time.Duration(early)
		}
		tat = max(r.tat, t) + interval
	}
	if !v.rejected() && l.Rate > 0 {
		r.tat = tat
	}
	return v
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
