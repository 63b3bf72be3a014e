package load

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
)

// VendorCheck checks the invariants against a mockvendor's statistics. Zero
// limit fields are taken from the limit the vendor enforces, if any; a check
// whose limit stays unknown is skipped.
type VendorCheck struct {
	// StatsURL is the vendor's statistics URL, e.g. http://mock:9090/stats;
	// the reset is POSTed to StatsURL + "/reset".
	StatsURL string
	// Concurrency is C, the bound of I1.
	Concurrency int
	// Rate per Period is R, and Burst is B, the bound of I2 being B + R*W.
	// Period zero: one second; Burst zero: the vendor's, else 1.
	Rate   int
	Period time.Duration
	Burst  int
	// Window is W. Zero: one second.
	Window time.Duration
	// Step, when positive, asks the vendor for its time series at this step
	// (Report.Vendor.Series), for Plot.
	Step time.Duration
}

// check fetches the vendor's statistics into rep and adds the budget and
// the checks.
func (v *VendorCheck) check(ctx context.Context, vendor *mockvendor.Client, rep *Report) error {
	w := v.Window
	if w <= 0 {
		w = time.Second
	}
	vs, err := vendor.Stats(ctx, mockvendor.StatsQuery{Window: w, Step: v.Step})
	if err != nil {
		return err
	}
	b := v.Budget(vs)
	rep.Vendor, rep.Budget = vs, &b
	rep.Checks = Checks(*v, vs, rep)
	return nil
}

// Budget is what the invariants are judged by: C, R, B and W. A zero
// Concurrency or PerSecond is unknown.
type Budget struct {
	Concurrency   int     `json:"concurrency"`
	PerSecond     float64 `json:"rate_per_second"`
	Burst         int     `json:"burst"`
	WindowSeconds float64 `json:"window_seconds"`
}

// InWindow is I2's bound, B + R*W.
func (b Budget) InWindow() float64 { return float64(b.Burst) + b.PerSecond*b.WindowSeconds }

// Budget resolves the budget of v against the vendor's report vs: fields
// of v win, zero ones are taken from the limit the vendor enforces.
func (v VendorCheck) Budget(vs *mockvendor.Report) Budget {
	conc, rate, period, burst := v.Concurrency, v.Rate, v.Period, v.Burst
	if l := vs.Limit; l != nil {
		if conc == 0 {
			conc = l.Concurrency
		}
		if rate == 0 && l.Rate > 0 {
			rate, period = l.Rate, time.Duration(l.PeriodSeconds*float64(time.Second))
		}
		if burst == 0 {
			burst = l.Burst
		}
	}
	if period <= 0 {
		period = time.Second
	}
	return Budget{Concurrency: conc, PerSecond: float64(rate) / period.Seconds(), Burst: max(burst, 1), WindowSeconds: vs.WindowSeconds}
}

// Checks judges the invariants on the vendor's report vs and the run's
// report run:
//
//   - I1: vendor max_in_flight <= C;
//   - I2: vendor max_in_window <= B + R*W;
//   - vendor limit: no request answered 429 by the vendor's own enforcement
//     (when it enforces one);
//   - I4: no 500, no transport error and no malformed answer seen by the
//     clients;
//   - I5 (INFO): vendor 2xx answers against the most the budget allowed
//     over the run, min(B + R*T, C*T/latency), latency being the vendor's
//     mean 2xx latency; meaningful only when demand exceeded the budget.
func Checks(v VendorCheck, vs *mockvendor.Report, run *Report) []Check {
	bud := v.Budget(vs)
	conc, burst, perSecond := bud.Concurrency, bud.Burst, bud.PerSecond

	var checks []Check
	bounded := func(name string, got, limit float64, known bool, detail string) {
		c := Check{Name: name, Got: got, Limit: limit, Detail: detail, Result: Pass}
		switch {
		case !known:
			c.Result, c.Detail = Skip, "limit unknown: give it, or let the vendor enforce one"
		case got > limit:
			c.Result = Fail
		}
		checks = append(checks, c)
	}
	bounded("I1 max in flight", float64(vs.MaxInFlight), float64(conc), conc > 0, fmt.Sprintf("C=%d", conc))
	bounded(fmt.Sprintf("I2 max arrivals in %s", vs.Window), float64(vs.MaxInWindow), bud.InWindow(), perSecond > 0,
		fmt.Sprintf("B + R*W = %d + %g/s * %s", burst, perSecond, vs.Window))
	if vs.Limit != nil {
		bounded("vendor limit violations", float64(vs.Violations), 0, true,
			fmt.Sprintf("concurrency %d, rate %d", vs.ViolationsByKind["concurrency"], vs.ViolationsByKind["rate"]))
	}
	bounded("I4 500s and transport errors", float64(run.Statuses[500]+run.TransportErrors+run.Malformed), 0, true,
		fmt.Sprintf("500: %d, transport: %d, malformed: %d", run.Statuses[500], run.TransportErrors, run.Malformed))

	if perSecond > 0 || conc > 0 {
		t := run.Elapsed.Seconds()
		budget := -1.0
		detail := ""
		if perSecond > 0 {
			budget = float64(burst) + perSecond*t
			detail = fmt.Sprintf("B + R*T = %.0f", budget)
		}
		if conc > 0 && vs.MeanOKLatencyMS > 0 {
			byConc := float64(conc) * t / (vs.MeanOKLatencyMS / 1000)
			if budget < 0 || byConc < budget {
				budget = byConc
				detail = fmt.Sprintf("C*T/latency = %d*%.1fs/%.0fms = %.0f", conc, t, vs.MeanOKLatencyMS, byConc)
			}
		}
		if budget > 0 {
			checks = append(checks, Check{Name: "I5 vendor 2xx vs budget", Result: Info,
				Got: float64(okCount(vs.ByStatus)), Limit: budget, Detail: detail + " (meaningful when demand exceeds it)"})
		}
	}
	return checks
}

func okCount(byStatus map[int]int64) int64 {
	var n int64
	for code, c := range byStatus {
		if code >= 200 && code < 300 {
			n += c
		}
	}
	return n
}
