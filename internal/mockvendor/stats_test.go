package mockvendor

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

const ms = time.Millisecond

func statsAt(starts ...time.Duration) Stats {
	s := Stats{}
	for _, t := range starts {
		s.Requests = append(s.Requests, Request{Start: t})
	}
	return s
}

func TestMaxInWindow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		starts []time.Duration
		w      time.Duration
		want   int
	}{
		{"empty", nil, time.Second, 0},
		{"one", []time.Duration{5 * ms}, time.Second, 1},
		{"negative window", []time.Duration{0, 1}, -1, 0},
		{"exactly w apart share a window", []time.Duration{0, 1000 * ms}, time.Second, 2},
		{"one ns more than w apart", []time.Duration{0, 1000*ms + 1}, time.Second, 1},
		{"zero window counts ties", []time.Duration{0, 3 * ms, 3 * ms, 3 * ms, 4 * ms}, 0, 3},
		{"zero window no ties", []time.Duration{0, 1, 2}, 0, 1},
		{"burst then steady", []time.Duration{0, 0, 0, 0, 0, 100 * ms, 200 * ms, 300 * ms, 400 * ms, 500 * ms}, 250 * ms, 7},
		{"steady 10/s over 1s closed", []time.Duration{0, 100 * ms, 200 * ms, 300 * ms, 400 * ms, 500 * ms, 600 * ms, 700 * ms, 800 * ms, 900 * ms, 1000 * ms, 1100 * ms}, time.Second, 11},
		{"densest cluster later", []time.Duration{0, 500 * ms, 2000 * ms, 2001 * ms, 2002 * ms, 2003 * ms}, 3 * ms, 4},
		{"unsorted input", []time.Duration{2003 * ms, 0, 2001 * ms, 500 * ms, 2000 * ms, 2002 * ms}, 2 * ms, 3},
		{"window larger than span", []time.Duration{0, 10 * ms, 20 * ms}, time.Hour, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := statsAt(tc.starts...).MaxInWindow(tc.w); got != tc.want {
				t.Errorf("MaxInWindow(%v) = %d, want %d", tc.w, got, tc.want)
			}
		})
	}
}

// TestMaxInWindowBruteForce compares the sliding window with counting every
// window that starts at an arrival (the densest closed window always can).
func TestMaxInWindowBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		ts := make([]time.Duration, r.IntN(40))
		for i := range ts {
			ts[i] = time.Duration(r.IntN(50)) * ms
		}
		w := time.Duration(r.IntN(20)) * ms
		want := 0
		for _, a := range ts {
			n := 0
			for _, b := range ts {
				if b >= a && b-a <= w {
					n++
				}
			}
			want = max(want, n)
		}
		if got := statsAt(ts...).MaxInWindow(w); got != want {
			t.Fatalf("%v w=%v: got %d, want %d", ts, w, got, want)
		}
	}
}

func TestDecide(t *testing.T) {
	type arrival struct {
		at   time.Duration
		rate bool // expected rate violation
	}
	for _, tc := range []struct {
		name     string
		limit    Limit
		arrivals []arrival
	}{
		{"burst of B then one per interval", Limit{Rate: 10, Burst: 3}, []arrival{
			{0, false}, {0, false}, {0, false}, {0, true},
			{99 * ms, true}, {100 * ms, false}, {150 * ms, true}, {200 * ms, false},
		}},
		{"bucket refills to B only", Limit{Rate: 10, Burst: 2}, []arrival{
			{0, false}, {10 * time.Second, false}, {10 * time.Second, false}, {10 * time.Second, true},
		}},
		{"rejections take no token", Limit{Rate: 1, Period: time.Minute}, []arrival{
			{0, false}, {30 * time.Second, true}, {59 * time.Second, true}, {60 * time.Second, false},
		}},
		{"jitter forgives early arrivals", Limit{Rate: 10, Jitter: 2 * ms}, []arrival{
			{0, false}, {98 * ms, false}, {197 * ms, true}, {198 * ms, false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.limit.Period = tc.limit.period()
			r := newRecorder(tc.limit, 10)
			for i, a := range tc.arrivals {
				if v := r.decide(a.at); v.rate != a.rate {
					t.Errorf("arrival %d at %v: rate violation %v, want %v", i, a.at, v.rate, a.rate)
				}
			}
		})
	}
}

// TestEnforcementMatchesMeasurement checks that whatever the rate limit
// admits also passes the I2 check B + R*W on every window.
func TestEnforcementMatchesMeasurement(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 50 {
		l := Limit{Rate: 1 + rnd.IntN(20), Period: time.Second, Burst: 1 + rnd.IntN(5)}
		r := newRecorder(l, 1)
		var admitted []time.Duration
		at := time.Duration(0)
		for range 300 {
			at += time.Duration(rnd.IntN(int(100 * ms)))
			if !r.decide(at).rejected() {
				admitted = append(admitted, at)
			}
		}
		s := statsAt(admitted...)
		for _, w := range []time.Duration{0, 10 * ms, 100 * ms, time.Second, 3 * time.Second} {
			bound := float64(l.Burst) + l.PerSecond()*w.Seconds()
			if got := s.MaxInWindow(w); float64(got) > bound {
				t.Fatalf("%+v: %d arrivals in %v > %v", l, got, w, bound)
			}
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in     string
		n      int
		period time.Duration
		bad    bool
	}{
		{"10/s", 10, time.Second, false},
		{"60/m", 60, time.Minute, false},
		{"100/h", 100, time.Hour, false},
		{"5/250ms", 5, 250 * ms, false},
		{"7", 7, time.Second, false},
		{"x/s", 0, 0, true},
		{"10/fortnight", 0, 0, true},
		{"-1/s", 0, 0, true},
		{"10/0s", 0, 0, true},
	} {
		n, p, err := ParseRate(tc.in)
		if (err != nil) != tc.bad || n != tc.n || p != tc.period {
			t.Errorf("ParseRate(%q) = %d, %v, %v", tc.in, n, p, err)
		}
	}
}

func ExampleStats_MaxInWindow() {
	s := Stats{Requests: []Request{{Start: 0}, {Start: 400 * ms}, {Start: 1000 * ms}, {Start: 1001 * ms}}}
	fmt.Println(s.MaxInWindow(time.Second)) // [0s, 1s] is closed: 0, 400ms and 1s
	fmt.Println(s.MaxInWindow(time.Millisecond))
	// Output:
	// 3
	// 2
}

func TestSeries(t *testing.T) {
	s := Stats{Elapsed: 1000 * ms, Requests: []Request{
		{Start: 0, End: 250 * ms, Status: 200},
		{Start: 10 * ms, End: 20 * ms, Status: 200},
		{Start: 20 * ms, End: 30 * ms, Status: 200}, // starts as the one before ends
		{Start: 120 * ms, End: 130 * ms, Status: 200},
		{Start: 900 * ms}, // in flight
	}}
	pts, step := s.Series(100*ms, 50*ms)
	if step != 100*ms || len(pts) != 11 {
		t.Fatalf("step %v, %d points", step, len(pts))
	}
	want := []Point{
		{At: 0, Arrivals: 3, MaxInFlight: 2, MaxInWindow: 3},
		{At: 100 * ms, Arrivals: 1, MaxInFlight: 2, MaxInWindow: 1},
		{At: 200 * ms, Arrivals: 0, MaxInFlight: 1},
		{At: 300 * ms},
	}
	for i, w := range want {
		if pts[i] != w {
			t.Errorf("point %d: %+v, want %+v", i, pts[i], w)
		}
	}
	if p := pts[9]; p.Arrivals != 1 || p.MaxInFlight != 1 {
		t.Errorf("point 9: %+v", p)
	}
	if p := pts[10]; p.MaxInFlight != 1 {
		t.Errorf("point 10 (still in flight): %+v", p)
	}
	if pts, _ := (Stats{}).Series(time.Second, time.Second); pts != nil {
		t.Errorf("no request: %v", pts)
	}
	if _, step := s.Series(time.Nanosecond, 0); step <= 1000*ms/MaxSeriesPoints {
		t.Errorf("a tiny step is not widened: %v", step)
	}
}

// TestSeriesMatchesMaxInWindow checks the series' maxima against the
// direct measure over random arrivals.
func TestSeriesMatchesMaxInWindow(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		s := Stats{Elapsed: time.Second}
		for range r.IntN(60) + 1 {
			st := time.Duration(r.IntN(1000)) * ms
			s.Requests = append(s.Requests, Request{Start: st, End: st + time.Duration(r.IntN(100))*ms, Status: 200})
		}
		w := time.Duration(r.IntN(300)) * ms
		pts, _ := s.Series(time.Duration(r.IntN(200)+1)*ms, w)
		most := 0
		for _, p := range pts {
			most = max(most, p.MaxInWindow)
		}
		if want := s.MaxInWindow(w); most != want {
			t.Fatalf("series max in window %d, MaxInWindow %d", most, want)
		}
	}
}
