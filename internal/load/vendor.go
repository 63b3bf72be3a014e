package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
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
}

// reset clears the vendor's statistics.
func (v *VendorCheck) reset(ctx context.Context, client *http.Client) error {
	u, err := url.Parse(v.StatsURL)
	if err != nil {
		return fmt.Errorf("load: vendor stats URL: %w", err)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/reset"
	u.RawQuery = ""
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return fmt.Errorf("load: vendor reset: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("load: vendor reset: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("load: vendor reset: POST %s: %s", u, resp.Status)
	}
	return nil
}

// fetch reads the vendor's statistics for window w.
func (v *VendorCheck) fetch(ctx context.Context, client *http.Client, w time.Duration) (*mockvendor.Report, error) {
	u, err := url.Parse(v.StatsURL)
	if err != nil {
		return nil, fmt.Errorf("load: vendor stats URL: %w", err)
	}
	q := u.Query()
	q.Set("window", w.String())
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("load: vendor stats: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("load: vendor stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("load: vendor stats: GET %s: %s", u, resp.Status)
	}
	var rep mockvendor.Report
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&rep); err != nil {
		return nil, fmt.Errorf("load: vendor stats: %w", err)
	}
	return &rep, nil
}

// check fetches the vendor's statistics into rep and adds the checks.
func (v *VendorCheck) check(ctx context.Context, client *http.Client, rep *Report) error {
	w := v.Window
	if w <= 0 {
		w = time.Second
	}
	vs, err := v.fetch(ctx, client, w)
	if err != nil {
		return err
	}
	rep.Vendor = vs
	rep.Checks = Checks(*v, vs, rep)
	return nil
}

// Checks judges the invariants on the vendor's report vs and the run's
// report run:
//
//   - I1: vendor max_in_flight <= C;
//   - I2: vendor max_in_window <= B + R*W;
//   - vendor limit: no request answered 429 by the vendor's own enforcement
//     (when it enforces one);
//   - I4: no 500 and no transport error seen by the clients;
//   - I5 (INFO): vendor 2xx answers against the most the budget allowed
//     over the run, min(B + R*T, C*T/latency), latency being the vendor's
//     mean 2xx latency; meaningful only when demand exceeded the budget.
func Checks(v VendorCheck, vs *mockvendor.Report, run *Report) []Check {
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
	burst = max(burst, 1)
	perSecond := float64(rate) / period.Seconds()
	w := time.Duration(vs.WindowSeconds * float64(time.Second))

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
	bounded(fmt.Sprintf("I2 max arrivals in %s", vs.Window), float64(vs.MaxInWindow), float64(burst)+perSecond*w.Seconds(), rate > 0,
		fmt.Sprintf("B + R*W = %d + %g/s * %s", burst, perSecond, vs.Window))
	if vs.Limit != nil {
		bounded("vendor limit violations", float64(vs.Violations), 0, true,
			fmt.Sprintf("concurrency %d, rate %d", vs.ViolationsByKind["concurrency"], vs.ViolationsByKind["rate"]))
	}
	bounded("I4 500s and transport errors", float64(run.Statuses[500]+run.TransportErrors), 0, true,
		fmt.Sprintf("500: %d, transport: %d", run.Statuses[500], run.TransportErrors))

	if rate > 0 || conc > 0 {
		t := run.Elapsed.Seconds()
		budget := -1.0
		detail := ""
		if rate > 0 {
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
