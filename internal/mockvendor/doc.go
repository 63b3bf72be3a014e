// Package mockvendor is a fake OpenAI-compatible vendor that measures the
// invariants of sluice (I1-I6 in the README) where they count: at the vendor.
//
// A Vendor is an http.Handler serving:
//
//	POST /v1/chat/completions  OpenAI chat.completion, or with "stream": true
//	                           Server-Sent Events of chat.completion.chunk
//	                           ending with "data: [DONE]"
//	GET  /v1/models            a one-model list
//	any other /v1 or path      404 in OpenAI's error shape
//	GET  /stats?window=1s      the statistics as JSON (see Report); with
//	     &step=100ms           also a time series of arrivals, calls in
//	                           flight and arrivals per window (Stats.Series)
//	POST /stats/reset          Reset; answers 204
//	GET  /healthz              200 "ok"
//
// Every request other than /stats, /stats/reset and /healthz is measured:
// its arrival is time-stamped on the monotonic clock as the handler starts,
// and its end just before the last bytes of the answer are written, so a
// client that has seen the whole answer can never find it still in flight
// here. Errors use OpenAI's shape {"error":{"message","type","param","code"}}.
//
// A request whose client goes away stays in flight here until the server
// notices the closed connection (well under a millisecond on loopback); a
// client that cancels and at once sends again can briefly be seen with one
// more request in flight than it ever had open. That is what a real vendor
// sees too.
//
// A measured request is answered in this order: 429 at once if it breaks the
// enforced Options.Limit; 404/405 for unknown paths and methods; 401 without
// the configured key; 413 for a body over 4 MiB; 400 for malformed JSON or a
// malformed X-Mock-* header; then, after the latency, the forced status, or
// a random 500 or 429, or the answer. A client that goes away before the
// answer is complete is recorded as StatusClientGone (499).
//
// Request headers force one request's behaviour, for tests:
//
//	X-Mock-Status: 503      answer this status (200-599) after the latency;
//	                        "200" also skips the random errors
//	X-Mock-Latency: 200ms   use this latency instead of Options' range
//	X-Mock-Stream-Cut: 1    abort the connection mid-answer (after half of
//	                        the chunks of a stream, half of the body of a
//	                        plain answer); "0" never cuts
//
// Statistics are exact and safe for concurrent use. Counters never lose
// anything; the per-request records (arrival, end, status) are a ring of the
// most recent Options.MaxRecords (default 1e6, 24 MB), so MaxInWindow
// covers those and Stats.Dropped says how many fell out.
//
// Client reads and resets the statistics of a vendor running elsewhere;
// tests in other packages start one on loopback with mockvendortest.Start.
package mockvendor
