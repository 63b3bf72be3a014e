// Package invariant holds the measurements that the tests, the mock vendor
// and the load tool use to check sluice's invariants (I1-I6, listed in the
// README).
package invariant

import (
	"encoding/json"
	"fmt"
	"slices"
)

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

// Answer checks one gateway answer for I4's "well formed": a 2xx body is a
// chat.completion with choices, any other body an error in the OpenAI shape
// {"error":{"message","type","code"}}. It returns the error's code, and what
// is malformed ("" when the answer is well formed).
func Answer(status int, body []byte) (code, malformed string) {
	if status/100 == 2 {
		var ok struct {
			Object  string `json:"object"`
			Choices []any  `json:"choices"`
		}
		if err := json.Unmarshal(body, &ok); err != nil || ok.Object != "chat.completion" || len(ok.Choices) == 0 {
			return "", fmt.Sprintf("2xx answer is not a chat.completion: %.200q", body)
		}
		return "", ""
	}
	var e struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
		return "", fmt.Sprintf("error answer not in the OpenAI shape: %.200q", body)
	}
	return e.Error.Code, ""
}
