package load

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
)

// Report is the outcome of a run. Requests equals the sum of Statuses,
// Cancelled, Aborted and TransportErrors.
type Report struct {
	URLs    []string
	Clients int
	Stream  bool
	// Elapsed runs from the first request to the end of the last one.
	Elapsed time.Duration
	// Requests counts the requests sent.
	Requests int
	// Statuses counts answers read in full, by status.
	Statuses map[int]int
	// Malformed counts the answers of Statuses that were not well formed
	// (Record.Err): a 2xx that is not a chat.completion or a stream without
	// [DONE], an error not in the OpenAI shape.
	Malformed int
	// Cancelled counts requests the client cancelled on purpose (Cancel)
	// before they completed.
	Cancelled int
	// Aborted counts requests abandoned because the run was interrupted.
	Aborted int
	// TransportErrors counts requests that got no answer in full:
	// connection errors, timeouts, cut bodies and streams.
	TransportErrors int
	// TransportErrorKinds counts them by a short description (ten kinds at
	// most, then "other").
	TransportErrorKinds map[string]int
	// Latency summarises the completion times of the answers read in full.
	Latency *Percentiles
	// QueueWait summarises the gateway's HeaderQueueWait; nil when no answer
	// carried it.
	QueueWait *Percentiles
	// Interrupted is set when the run's context was cancelled.
	Interrupted bool
	// Vendor is the vendor's view after the run, when checked.
	Vendor *mockvendor.Report
	// Budget is the budget the checks judged by, when the vendor was
	// checked.
	Budget *Budget
	// Checks are the invariant checks, when the vendor was checked.
	Checks []Check
	// Records are the requests, in the order they finished; not part of
	// the JSON form.
	Records []Record
}

// newReport counts recs.
func newReport(recs []Record) *Report {
	rep := &Report{Statuses: map[int]int{}, Requests: len(recs), Records: recs}
	var latencies, waits []time.Duration
	for _, r := range recs {
		switch {
		case r.Cancelled:
			rep.Cancelled++
		case r.Aborted:
			rep.Aborted++
		case r.Status == 0:
			rep.TransportErrors++
			if rep.TransportErrorKinds == nil {
				rep.TransportErrorKinds = map[string]int{}
			}
			kind := r.Err
			if _, seen := rep.TransportErrorKinds[kind]; !seen && len(rep.TransportErrorKinds) >= maxErrKinds {
				kind = "other"
			}
			rep.TransportErrorKinds[kind]++
		default:
			rep.Statuses[r.Status]++
			latencies = append(latencies, r.Latency())
			if r.HasQueueWait {
				waits = append(waits, r.QueueWait)
			}
			if r.Err != "" {
				rep.Malformed++
			}
		}
	}
	rep.Latency, rep.QueueWait = Summarize(latencies), Summarize(waits)
	return rep
}

// maxErrKinds bounds the kinds of transport errors a report describes.
const maxErrKinds = 10

// Result of a Check.
const (
	Pass = "PASS"
	Fail = "FAIL"
	Skip = "SKIP" // the limit to check against is unknown
	Info = "INFO" // a measure without a verdict
)

// Check is the verdict on one invariant.
type Check struct {
	// Name names the invariant, e.g. "I1 max in flight".
	Name string `json:"name"`
	// Result is Pass, Fail, Skip or Info.
	Result string `json:"result"`
	// Got and Limit are the measure and its bound.
	Got   float64 `json:"got"`
	Limit float64 `json:"limit"`
	// Detail says how the bound was computed.
	Detail string `json:"detail"`
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool {
	return slices.ContainsFunc(r.Checks, func(c Check) bool { return c.Result == Fail })
}

// Percentiles summarises durations with the nearest-rank method: the p-th
// percentile of n sorted values is the value of rank ceil(p/100*n).
type Percentiles struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

// Summarize returns the percentiles of ds (which it does not modify), or nil
// for none.
func Summarize(ds []time.Duration) *Percentiles {
	if len(ds) == 0 {
		return nil
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return s[max(i, 0)]
	}
	return &Percentiles{N: len(s), P50: rank(50), P90: rank(90), P99: rank(99), Max: s[len(s)-1]}
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// MarshalJSON writes the durations in milliseconds.
func (p *Percentiles) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		N     int     `json:"n"`
		P50   float64 `json:"p50_ms"`
		P90   float64 `json:"p90_ms"`
		P99   float64 `json:"p99_ms"`
		MaxMS float64 `json:"max_ms"`
	}{p.N, millis(p.P50), millis(p.P90), millis(p.P99), millis(p.Max)})
}

// MarshalJSON writes the report for scripts: durations in seconds or
// milliseconds as their names say, statuses keyed by code.
func (r *Report) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		URLs                []string           `json:"urls"`
		Clients             int                `json:"clients"`
		Stream              bool               `json:"stream"`
		ElapsedSeconds      float64            `json:"elapsed_seconds"`
		Requests            int                `json:"requests"`
		RequestsPerSecond   float64            `json:"requests_per_second"`
		Statuses            map[int]int        `json:"statuses"`
		Malformed           int                `json:"malformed"`
		Cancelled           int                `json:"cancelled"`
		Aborted             int                `json:"aborted"`
		TransportErrors     int                `json:"transport_errors"`
		TransportErrorKinds map[string]int     `json:"transport_error_kinds,omitempty"`
		Latency             *Percentiles       `json:"latency,omitempty"`
		QueueWait           *Percentiles       `json:"queue_wait,omitempty"`
		Interrupted         bool               `json:"interrupted"`
		Vendor              *mockvendor.Report `json:"vendor,omitempty"`
		Budget              *Budget            `json:"budget,omitempty"`
		Checks              []Check            `json:"checks,omitempty"`
		Failed              bool               `json:"failed"`
	}{r.URLs, r.Clients, r.Stream, r.Elapsed.Seconds(), r.Requests, r.rate(), r.Statuses, r.Malformed, r.Cancelled,
		r.Aborted, r.TransportErrors, r.TransportErrorKinds, r.Latency, r.QueueWait, r.Interrupted,
		r.Vendor, r.Budget, r.Checks, r.Failed()})
}

func (r *Report) rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// WriteText writes the report as tables for people.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	stream := ""
	if r.Stream {
		stream = ", streaming"
	}
	fmt.Fprintf(&b, "%d requests in %.1fs (%.1f req/s), %d clients%s, %s\n",
		r.Requests, r.Elapsed.Seconds(), r.rate(), r.Clients, stream, strings.Join(r.URLs, ", "))
	if r.Interrupted {
		b.WriteString("interrupted: requests in flight were abandoned\n")
	}
	b.WriteString("\n")

	fmt.Fprintf(&b, "%-16s %7s %7s\n", "outcome", "count", "share")
	row := func(name string, n int) {
		share := 0.0
		if r.Requests > 0 {
			share = 100 * float64(n) / float64(r.Requests)
		}
		fmt.Fprintf(&b, "%-16s %7d %6.1f%%\n", name, n, share)
	}
	for _, code := range sortedKeys(r.Statuses) {
		row(fmt.Sprint(code), r.Statuses[code])
	}
	row("cancelled", r.Cancelled)
	row("transport error", r.TransportErrors)
	if r.Aborted > 0 {
		row("aborted", r.Aborted)
	}
	if r.Malformed > 0 {
		fmt.Fprintf(&b, "  of them malformed: %d\n", r.Malformed)
	}
	for _, k := range sortedKeys(r.TransportErrorKinds) {
		fmt.Fprintf(&b, "  transport error %q: %d\n", k, r.TransportErrorKinds[k])
	}

	fmt.Fprintf(&b, "\n%-11s %6s %9s %9s %9s %9s\n", "", "n", "p50", "p90", "p99", "max")
	for _, p := range []struct {
		name string
		p    *Percentiles
	}{{"latency", r.Latency}, {"queue wait", r.QueueWait}} {
		if p.p == nil {
			fmt.Fprintf(&b, "%-11s %6d   (none)\n", p.name, 0)
			continue
		}
		fmt.Fprintf(&b, "%-11s %6d %9s %9s %9s %9s\n", p.name, p.p.N, round(p.p.P50), round(p.p.P90), round(p.p.P99), round(p.p.Max))
	}

	if v := r.Vendor; v != nil {
		fmt.Fprintf(&b, "\nvendor: %d arrivals, max in flight %d, max %d in %s, %d limit violations, by status %s\n",
			v.Arrivals, v.MaxInFlight, v.MaxInWindow, v.Window, v.Violations, formatCounts(v.ByStatus))
	}
	if len(r.Checks) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, c := range r.Checks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Result, c.Name, formatCheck(c), c.Detail)
		}
		tw.Flush()
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func formatCheck(c Check) string {
	switch c.Result {
	case Skip:
		return "-"
	case Info:
		return fmt.Sprintf("%.0f%%", 100*c.Got/c.Limit)
	}
	return fmt.Sprintf("%g <= %g", c.Got, math.Round(c.Limit*100)/100)
}

// round shortens a duration for a table.
func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func formatCounts[K cmp.Ordered, V any](m map[K]V) string {
	parts := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%v:%v", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}
