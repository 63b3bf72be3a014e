package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/invariant"
)

// Record is the outcome of one request, as its client saw it.
type Record struct {
	// Target names the gateway it was sent to: its Config.Names entry, or
	// its URL.
	Target string
	// Start and End bound the request at the client.
	Start, End time.Time
	// Status is the HTTP status of an answer read in full; 0 when none was
	// (see Err, Cancelled and Aborted).
	Status int
	// Code is error.code of an error answer.
	Code string
	// RetryAfter is the answer's Retry-After header.
	RetryAfter string
	// QueueWait is the answer's HeaderQueueWait, when HasQueueWait.
	QueueWait    time.Duration
	HasQueueWait bool
	// Cancelled: the client cancelled the request on purpose (Config.Cancel)
	// before its answer was complete; no answer is due then.
	Cancelled bool
	// Aborted: the request was abandoned because the context of the load
	// ended.
	Aborted bool
	// Err says why an answer was due but no well-formed one came: with
	// Status 0, a transport error (connection, timeout, cut body); with a
	// Status, what is malformed (see invariant.Answer; a stream must end
	// with "data: [DONE]"). Empty otherwise.
	Err string
}

// Latency is the time from sending the request to the end of its answer.
func (r Record) Latency() time.Duration { return r.End.Sub(r.Start) }

// Answered reports whether a well-formed answer was read in full.
func (r Record) Answered() bool { return r.Status != 0 && r.Err == "" }

// String describes r in one line, for logs.
func (r Record) String() string {
	s := fmt.Sprintf("%s at %s: ", r.Target, r.Start.Format("15:04:05.000"))
	switch {
	case r.Cancelled:
		return s + "cancelled by its client" + fmt.Sprintf(" (after %s)", r.Latency().Round(time.Millisecond))
	case r.Aborted:
		return s + "abandoned as the load ended"
	case r.Status == 0:
		return s + "no answer: " + r.Err + fmt.Sprintf(" (after %s)", r.Latency().Round(time.Millisecond))
	}
	s += fmt.Sprintf("%d %s in %s", r.Status, r.Code, r.Latency().Round(time.Millisecond))
	if r.RetryAfter != "" {
		s += fmt.Sprintf(" (Retry-After %s)", r.RetryAfter)
	}
	if r.Err != "" {
		s += " MALFORMED: " + r.Err
	}
	return s
}

// Normal says why r is not an answer a client of a loaded, healthy gateway
// may get: a 200, or a 503 queue_timeout with Retry-After; "" when it is
// one. A request its client cancelled needs no answer.
func Normal(r Record) string {
	switch {
	case r.Cancelled:
		return ""
	case r.Aborted:
		return "abandoned as the load ended"
	case r.Err != "":
		return r.Err
	case r.Status == http.StatusOK:
		return ""
	case r.Status == http.StatusServiceUnavailable && r.Code == "queue_timeout":
		if r.RetryAfter == "" {
			return "503 queue_timeout without Retry-After"
		}
		return ""
	}
	return "unexpected answer"
}

// Count returns how many records match.
func Count(recs []Record, match func(Record) bool) int {
	n := 0
	for _, r := range recs {
		if match(r) {
			n++
		}
	}
	return n
}

// Summary counts the records by target and outcome, in one line for logs.
func Summary(recs []Record) string {
	by := map[string]map[string]int{}
	for _, r := range recs {
		if by[r.Target] == nil {
			by[r.Target] = map[string]int{}
		}
		k := strconv.Itoa(r.Status)
		switch {
		case r.Cancelled:
			k = "cancelled"
		case r.Aborted:
			k = "aborted"
		case r.Status == 0:
			k = "no answer"
		case r.Code != "":
			k += " " + r.Code
		}
		if r.Status != 0 && r.Err != "" {
			k += " malformed"
		}
		by[r.Target][k]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d requests, %d cancelled by their client:", len(recs), Count(recs, func(r Record) bool { return r.Cancelled }))
	for _, target := range slices.Sorted(maps.Keys(by)) {
		fmt.Fprintf(&b, " %s{", target)
		for i, k := range slices.Sorted(maps.Keys(by[target])) {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s: %d", k, by[target][k])
		}
		b.WriteString("}")
	}
	return b.String()
}

// maxAnswer bounds the answer bodies read.
const maxAnswer = 4 << 20

// readAnswer reads resp in full into rec. A stream (2xx text/event-stream)
// must end with "data: [DONE]"; any other body is judged by
// invariant.Answer. A read error leaves rec.Status 0: the answer did not
// come in full.
func readAnswer(resp *http.Response, rec *Record) error {
	defer resp.Body.Close()
	status := resp.StatusCode
	if status/100 == 2 && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		done := false
		for sc.Scan() {
			done = done || sc.Text() == "data: [DONE]"
		}
		if err := sc.Err(); err != nil {
			return err
		}
		if !done {
			rec.Err = "stream ended without [DONE]"
		}
	} else {
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		if err != nil {
			return err
		}
		rec.Code, rec.Err = invariant.Answer(status, body)
	}
	rec.Status = status
	rec.RetryAfter = resp.Header.Get("Retry-After")
	rec.QueueWait, rec.HasQueueWait = parseQueueWait(resp.Header.Get(HeaderQueueWait))
	return nil
}

// parseQueueWait parses HeaderQueueWait: milliseconds or a Go duration.
func parseQueueWait(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	if ms, err := strconv.ParseFloat(s, 64); err == nil && ms >= 0 {
		return time.Duration(ms * float64(time.Millisecond)), true
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, true
	}
	return 0, false
}

// describeError drops the per-request parts (method, URL) of err.
func describeError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Op + ": " + oe.Err.Error()
	}
	return err.Error()
}
