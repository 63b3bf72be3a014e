package mockvendor

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

func TestEstimate(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		def        int
		want       int64
	}{
		{"no messages, default allowance", `{}`, 1024, 1024},
		{"chars rounded up over all messages", `{"messages":[{"role":"user","content":"abcde"},{"role":"user","content":"fg"}],"max_tokens":10}`, 1024, 2 + 10},
		{"exact multiple", `{"messages":[{"content":"abcdefgh"}],"max_tokens":0}`, 1024, 2},
		{"code points, not bytes", `{"messages":[{"content":"héllo wörld ✓"}],"max_tokens":1}`, 1024, 4 + 1},
		{"text parts count, images do not", `{"messages":[{"content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"data:xxxxxxxxxxxxxxxx"}},{"type":"text","text":"efgh"}]}],"max_tokens":1}`, 1024, 2 + 1},
		{"max_completion_tokens when no max_tokens", `{"max_completion_tokens":300}`, 1024, 300},
		{"max_tokens wins", `{"max_tokens":7,"max_completion_tokens":300}`, 1024, 7},
		{"the configured default", `{"messages":[{"content":"abcd"}]}`, 50, 1 + 50},
		{"times n", `{"messages":[{"content":"abcd"}],"max_tokens":10,"n":3}`, 1024, 1 + 30},
		{"n zero or negative is 1", `{"max_tokens":10,"n":0}`, 1024, 10},
		{"negative max_tokens is 0", `{"messages":[{"content":"abcd"}],"max_tokens":-5}`, 1024, 1},
		{"hostile sizes are bounded", `{"max_tokens":9223372036854775807,"n":9223372036854775807}`, 1024, maxAllowance * maxN},
		{"null content", `{"messages":[{"role":"assistant","content":null}],"max_tokens":3}`, 1024, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r chatRequest
			if err := json.Unmarshal([]byte(tc.body), &r); err != nil {
				t.Fatal(err)
			}
			if got := r.estimate(tc.def); got != tc.want {
				t.Errorf("estimate %d, want %d", got, tc.want)
			}
		})
	}
}

// TestTokenBucket drives the token bucket directly: costs taken from a
// burst, refilled at the rate, a request too large for the burst refused
// for good, a refusal taking nothing and a settled excess delaying the next.
func TestTokenBucket(t *testing.T) {
	l := Limit{TokenRate: 100, TokenPeriod: time.Second, TokenBurst: 100} // one token per 10ms
	r := newRecorder(l, 100)
	charge := func(at time.Duration, cost int64) verdict {
		t.Helper()
		tk := r.arrive()
		tk.start = at // the token decision is taken at this arrival
		v := r.chargeTokens(tk, cost)
		r.finish(tk, 200, false)
		return v
	}
	if v := charge(0, 60); v.rejected() {
		t.Fatalf("60 of 100: %+v", v)
	}
	if v := charge(0, 41); !v.tokens || v.tooLarge || v.retryAfter != 10*ms {
		t.Fatalf("41 with 40 left: %+v, want a refusal for 10ms", v)
	}
	if v := charge(0, 40); v.rejected() {
		t.Fatalf("40 with 40 left (the refusal took nothing): %+v", v)
	}
	if v := charge(0, 101); !v.tooLarge {
		t.Fatalf("101 > burst: %+v", v)
	}
	if v := charge(100*ms, 10); v.rejected() {
		t.Fatalf("10 after 100ms: %+v", v)
	}
	if v := charge(100*ms, 1); !v.tokens {
		t.Fatalf("1 more at once: %+v", v)
	}
	s := r.snapshot(true)
	if s.TokenViolations != 3 || s.Violations != 3 || s.TokenArrivals != 60+41+40+101+10+1 {
		t.Errorf("violations %d/%d, token arrivals %d", s.TokenViolations, s.Violations, s.TokenArrivals)
	}
	var kept int64
	for _, q := range s.Requests {
		kept += q.Tokens
	}
	if kept != 60+40+10 {
		t.Errorf("records hold %d tokens, want the 110 charged", kept)
	}
}

// TestTokenEnforcementMatchesMeasurement checks that whatever the token
// limit admits, with settled excesses, passes TokenBurst + TokenRate*W on
// every window: the bound sluice keeps is the one the vendor enforces.
func TestTokenEnforcementMatchesMeasurement(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	for range 50 {
		l := Limit{TokenRate: 100 + rnd.IntN(2000), TokenPeriod: time.Second, TokenBurst: 200 + rnd.IntN(1000)}
		g := newGCRA(l.TokenRate, l.TokenPeriod, l.TokenBurst, 0)
		var ev []tokenEvent
		at := time.Duration(0)
		for range 300 {
			at += time.Duration(rnd.IntN(int(50 * ms)))
			cost := int64(1 + rnd.IntN(200))
			tat, early := g.check(at, cost)
			if early > 0 {
				continue
			}
			g.tat = tat
			ev = append(ev, tokenEvent{at, cost})
		}
		for _, w := range []time.Duration{0, 10 * ms, 100 * ms, time.Second, 3 * time.Second} {
			bound := float64(l.TokenBurst) + l.TokensPerSecond()*w.Seconds()
			if got := maxTokensInWindow(ev, w); float64(got) > bound+1e-6 {
				t.Fatalf("%+v: %d tokens in %v > %v", l, got, w, bound)
			}
		}
	}
}

func TestMaxTokensInWindowBruteForce(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 8))
	for range 100 {
		var reqs []Request
		for range 1 + rnd.IntN(40) {
			start := time.Duration(rnd.IntN(1000)) * ms
			reqs = append(reqs, Request{Start: start, End: start + time.Duration(rnd.IntN(300))*ms,
				Tokens: int64(rnd.IntN(50)), Settled: int64(rnd.IntN(3) * rnd.IntN(20))})
		}
		ev := tokenEvents(reqs)
		w := time.Duration(rnd.IntN(400)) * ms
		var want int64
		for _, from := range ev {
			var sum int64
			for _, e := range ev {
				if e.at >= from.at && e.at <= from.at+w {
					sum += e.tokens
				}
			}
			want = max(want, sum)
		}
		if got := (Stats{Requests: reqs}).MaxTokensInWindow(w); got != want {
			t.Fatalf("window %v: %d, brute force %d", w, got, want)
		}
	}
}

func TestOutageSchedule(t *testing.T) {
	r := newRecorderWithOutage(Limit{}, 10, Outage{Start: time.Second, Duration: 2 * time.Second, Status: 503})
	for _, tc := range []struct {
		at   time.Duration
		want int
	}{{0, 0}, {999 * ms, 0}, {time.Second, 503}, {2999 * ms, 503}, {3 * time.Second, 0}} {
		if got := r.outageStatus(tc.at); got != tc.want {
			t.Errorf("at %v: %d, want %d", tc.at, got, tc.want)
		}
	}
	def := newRecorderWithOutage(Limit{}, 10, Outage{Duration: time.Second})
	if got := def.outageStatus(0); got != DefaultOutageStatus {
		t.Errorf("default status %d", got)
	}
}

func TestDurationHeader(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                      "0s",
		time.Second:                            "1s",
		6 * time.Minute:                        "6m0s",
		20 * ms:                                "20ms",
		19*ms + 1:                              "20ms", // rounded up
		1500 * ms:                              "1.5s",
		time.Minute + 1234567*time.Microsecond: "1m1.235s",
	} {
		if got := durationHeader(d); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
}
