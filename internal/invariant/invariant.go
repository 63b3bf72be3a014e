// Package invariant holds the measurements that the tests, the mock vendor
// and the load tool use to check sluice's invariants (shared/DESIGN.md).
package invariant

import "slices"

// MaxInWindow returns the most timestamps that fall in any closed window
// [t, t+w], for timestamps in any unit of an integer type (time.Duration,
// microseconds...). It is I2's measure: it must stay at or below B + R*w.
// ts is not modified.
func MaxInWindow[T ~int64](ts []T, w T) int {
	s := slices.Clone(ts)
	slices.Sort(s)
	best, lo := 0, 0
	for hi, t := range s {
		for t-s[lo] > w {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}
