package limiter

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Limit is a rate: Rate events per Period, with bursts of up to Burst events.
// It has the fields of redis_rate.Limit, in the same order, so a Go
// conversion turns one into the other (redis_rate.Limit(l)); PerSecond,
// PerMinute and PerHour build the same limits as redis_rate's functions of
// those names, whose burst is the rate. ParseLimit gives burst 1 instead, the
// strictest.
//
// The zero Limit means "no limit".
type Limit struct {
	Rate   int
	Burst  int
	Period time.Duration
}

// PerSecond returns a Limit of rate events per second with a burst of rate,
// as redis_rate.PerSecond does.
func PerSecond(rate int) Limit { return Limit{Rate: rate, Burst: rate, Period: time.Second} }

// PerMinute returns a Limit of rate events per minute with a burst of rate,
// as redis_rate.PerMinute does.
func PerMinute(rate int) Limit { return Limit{Rate: rate, Burst: rate, Period: time.Minute} }

// PerHour returns a Limit of rate events per hour with a burst of rate, as
// redis_rate.PerHour does.
func PerHour(rate int) Limit { return Limit{Rate: rate, Burst: rate, Period: time.Hour} }

// IsZero reports whether l is the zero Limit (no limit).
func (l Limit) IsZero() bool { return l == Limit{} }

// Interval is the time one token takes to refill: Period / Rate, rounded UP
// to a whole microsecond, the unit in which the Bucket keeps time. Rounding
// up is the safe way: a bucket of 3/s grants a token every 333334µs, never
// faster than the rate. It is the interval the Bucket and the semaphore's
// admission use; it is zero when Rate is not positive.
func (l Limit) Interval() time.Duration {
	if l.Rate <= 0 || l.Period <= 0 {
		return 0
	}
	us := l.Period.Microseconds()
	return time.Duration((us+int64(l.Rate)-1)/int64(l.Rate)) * time.Microsecond
}

// String formats l as ParseLimit reads it, e.g. "60/m burst 5".
func (l Limit) String() string {
	if l.IsZero() {
		return "unlimited"
	}
	return fmt.Sprintf("%d/%s burst %d", l.Rate, fmtPeriod(l.Period), l.Burst)
}

// Validate reports whether l can be used by a Bucket: a positive rate, a
// positive burst, and a period of whole microseconds, at least Rate of them
// (the scripts keep time in microseconds).
func (l Limit) Validate() error {
	switch {
	case l.Rate <= 0:
		return fmt.Errorf("limiter: rate must be positive, got %d", l.Rate)
	case l.Burst <= 0:
		return fmt.Errorf("limiter: burst must be positive, got %d", l.Burst)
	case l.Period <= 0:
		return fmt.Errorf("limiter: period must be positive, got %s", l.Period)
	case l.Period%time.Microsecond != 0:
		return fmt.Errorf("limiter: period must be a whole number of microseconds, got %s", l.Period)
	case l.Period.Microseconds() < int64(l.Rate):
		return fmt.Errorf("limiter: rate %d per %s is finer than one token per microsecond", l.Rate, l.Period)
	}
	return nil
}

func fmtPeriod(d time.Duration) string {
	switch d {
	case time.Second:
		return "s"
	case time.Minute:
		return "m"
	case time.Hour:
		return "h"
	}
	return d.String()
}

var errLimitSyntax = errors.New(`want RATE/PERIOD, e.g. "60/m", "10/s", "1000/h" or "5/250ms"`)

// ParseLimit reads a rate written as RATE/PERIOD: "60/m", "10/s", "1000/h",
// "1/d", or any Go duration as the period ("5/250ms", "30/1m30s"). The
// returned Limit has Burst 1, the strictest (no two events closer than
// Interval); set Burst separately.
func ParseLimit(s string) (Limit, error) {
	rate, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Limit{}, fmt.Errorf("limiter: invalid rate %q: %w", s, errLimitSyntax)
	}
	n, err := strconv.Atoi(strings.TrimSpace(rate))
	if err != nil || n <= 0 {
		return Limit{}, fmt.Errorf("limiter: invalid rate %q: the count must be a positive integer: %w", s, errLimitSyntax)
	}
	var period time.Duration
	switch p := strings.TrimSpace(per); p {
	case "s", "sec", "second":
		period = time.Second
	case "m", "min", "minute":
		period = time.Minute
	case "h", "hour":
		period = time.Hour
	case "d", "day":
		period = 24 * time.Hour
	default:
		period, err = time.ParseDuration(p)
		if err != nil || period <= 0 {
			return Limit{}, fmt.Errorf("limiter: invalid rate %q: unknown period %q: %w", s, p, errLimitSyntax)
		}
	}
	l := Limit{Rate: n, Burst: 1, Period: period}
	if err := l.Validate(); err != nil {
		return Limit{}, err
	}
	return l, nil
}
