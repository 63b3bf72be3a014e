package invariant

import (
	"testing"
	"time"
)

func TestMaxInWindow(t *testing.T) {
	for _, tc := range []struct {
		ts   []int64
		w    int64
		want int
	}{
		{nil, 10, 0},
		{[]int64{5}, 0, 1},
		{[]int64{0, 0, 0}, 0, 3},
		{[]int64{0, 10, 20}, 10, 2}, // closed: 0 and 10 share a window
		{[]int64{0, 10, 20}, 9, 1},
		{[]int64{30, 0, 20, 10}, 20, 3}, // unsorted input
		{[]int64{0, 1, 2, 100, 101}, 50, 3},
	} {
		if got := MaxInWindow(tc.ts, tc.w); got != tc.want {
			t.Errorf("MaxInWindow(%v, %d) = %d, want %d", tc.ts, tc.w, got, tc.want)
		}
	}
	if got := MaxInWindow([]time.Duration{0, time.Second, 2 * time.Second}, time.Second); got != 2 {
		t.Errorf("durations: %d", got)
	}
}

func TestAnswer(t *testing.T) {
	for _, tc := range []struct {
		status    int
		body      string
		code      string
		malformed bool
	}{
		{200, `{"object":"chat.completion","choices":[{}]}`, "", false},
		{200, `{"object":"chat.completion","choices":[]}`, "", true},
		{200, `oops`, "", true},
		{503, `{"error":{"message":"m","type":"t","code":"queue_timeout"}}`, "queue_timeout", false},
		{503, `{"error":{"message":"","type":"t"}}`, "", true},
		{500, `panic: runtime error`, "", true},
	} {
		code, malformed := Answer(tc.status, []byte(tc.body))
		if code != tc.code || (malformed != "") != tc.malformed {
			t.Errorf("Answer(%d, %s) = %q, %q", tc.status, tc.body, code, malformed)
		}
	}
}
