package guarded

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// The errors of a guarded call. Package guard exports them under the same
// names.
var (
	// ErrQueueTimeout: the call could not start within the queue deadline.
	// It is never retried. The error also matches semaphore.ErrQueueTimeout.
	ErrQueueTimeout = errors.New("guard: queue timeout")
	// ErrUnavailable: the coordination store (Redis) failed or did not
	// answer, so no call was admitted (fail closed). The error also matches
	// semaphore.ErrUnavailable when the semaphore said so.
	ErrUnavailable = errors.New("guard: coordination store unavailable")
	// ErrVendorFailed: every attempt failed without an HTTP answer to return
	// (network errors, timeouts, lost leases), or the answer could not be
	// passed on (not a final status, too large).
	ErrVendorFailed = errors.New("guard: vendor call failed")
	// ErrCallTimeout: an attempt (or a stream) passed the call deadline.
	ErrCallTimeout = errors.New("guard: call deadline")
	// ErrLeaseLost: the admission lease ended under the call (expired while
	// this process was frozen, taken over): the slot may be another's now,
	// so the call stopped.
	ErrLeaseLost = errors.New("guard: lease lost")
)

// VendorError is returned when every attempt failed without an HTTP answer
// to return. It matches ErrVendorFailed, and the last attempt's error.
type VendorError struct {
	// Attempts is how many attempts were made.
	Attempts int
	// Detail says, in a sentence fit for a client, what went wrong last.
	Detail string
	// Err is the last attempt's error.
	Err error
}

func (e *VendorError) Error() string {
	s := "guard: vendor call failed after " + strconv.Itoa(e.Attempts) + " attempt"
	if e.Attempts != 1 {
		s += "s"
	}
	return s + ": " + e.Detail
}

// Is matches ErrVendorFailed.
func (e *VendorError) Is(target error) bool { return target == ErrVendorFailed }

func (e *VendorError) Unwrap() error { return e.Err }

// Retryable reports whether an answer of this status is retried: 408, 429
// and 5xx.
func Retryable(code int) bool {
	return code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500
}

// RetryAfter reads how long the vendor asked to wait: retry-after-ms
// (OpenAI), else Retry-After in seconds or as an HTTP date. Zero if absent.
func RetryAfter(h http.Header) time.Duration {
	const most = 24 * time.Hour // no overflow; any such wait exceeds every SLA anyway
	if ms, err := strconv.ParseFloat(h.Get("Retry-After-Ms"), 64); err == nil && ms > 0 {
		return time.Duration(min(ms, float64(most/time.Millisecond)) * float64(time.Millisecond))
	}
	v := h.Get("Retry-After")
	if secs, err := strconv.ParseFloat(v, 64); err == nil && secs > 0 {
		return time.Duration(min(secs, most.Seconds()) * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), most)
	}
	return 0
}

// wrap returns an error matching both sentinel and cause.
func wrap(sentinel, cause error) error { return fmt.Errorf("%w: %w", sentinel, cause) }
