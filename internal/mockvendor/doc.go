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
//	POST /outage?for=20s&status=500
//	                           StartOutage (without for: until ended);
//	                           answers 204
//	DELETE /outage             EndOutage; answers 204
//	GET  /healthz              200 "ok"
//
// Every request other than /stats, /stats/reset, /outage and /healthz is
// measured:
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
// A measured request is answered in this order: the outage's status at once
// during an outage (taking nothing from the Limit); 429 at once if it breaks
// the enforced Options.Limit's concurrency or request rate; 404/405 for
// unknown paths and methods; 401 without the configured key; 413 for a body
// over 4 MiB; 400 for malformed JSON or a malformed X-Mock-* header; 429 at
// once if its tokens break the Limit; then, after the latency, the forced
// status, or a random 500 or 429, or the answer. A client that goes
// away before the answer is complete is recorded as StatusClientGone (499).
//
// # Tokens, as OpenAI counts them
//
// A chat request's token estimate, taken when its body is read and charged
// at its arrival, is ceil(characters of all message contents / 4) plus its
// output allowance: max_tokens, else max_completion_tokens, else
// Options.DefaultMaxTokens (1024), times n (default 1). Characters are
// Unicode code points of string contents and of "text" content parts.
// With Limit.TokenRate the estimate is taken from a token bucket (GCRA, like
// the request rate, and for the same reason: its bound TokenBurst +
// TokenRate*W on any window W is the one sluice keeps, so a budget
// configured alike on both sides is judged exactly; a sliding window would
// judge a different bound). A request that does not fit is answered 429
// with type "tokens", Retry-After and retry-after-ms (when it will fit), and
// takes neither tokens nor a request; one whose estimate exceeds TokenBurst
// can never fit and gets 429 "Request too large" without Retry-After.
//
// Answers carry usage: prompt_tokens (words of the string contents: a real
// tokenizer differs from the estimate too), completion_tokens
// (X-Mock-Completion-Tokens, else Options.CompletionTokens, else
// CompletionFraction of the allowance, else the number of chunks) and total_tokens. A stream carries it only when the
// request asks with stream_options.include_usage: then every chunk has
// "usage": null and a last chunk with empty choices carries it, as OpenAI
// sends it. When an answer ends, what its total_tokens used above the
// estimate is charged too (the bucket may go into debt, delaying the next
// requests); usage below the estimate gives nothing back, and an error
// answer keeps its estimate charged. A cut answer settles as if whole.
//
// # Rate-limit headers
//
// Every measured answer carries OpenAI's headers for each enforced bucket
// (requests and tokens):
//
//	x-ratelimit-limit-requests      the bucket size
//	x-ratelimit-remaining-requests  what is left in it after this request
//	x-ratelimit-reset-requests      the time until it is full again, a Go
//	                                duration such as 1s, 6m0s or 20ms,
//	                                rounded up to the millisecond
//
// and the same three ending in -tokens.
// Every 429 carries Retry-After (whole seconds, rounded up) and
// retry-after-ms, except a request too large for the token bucket.
//
// # Outages
//
// Options.Outage schedules a window, from the start of each epoch, during
// which every measured request is answered its status (default 500) at
// once: "down for 20 s, then back". POST /outage (Vendor.StartOutage,
// Client.StartOutage) starts one now, for a duration or until DELETE
// /outage; it survives a Reset. Stats.OutageAnswers counts the answers.
//
// Request headers force one request's behaviour, for tests:
//
//	X-Mock-Status: 503      answer this status (200-599) after the latency;
//	                        "200" also skips the random errors
//	X-Mock-Latency: 200ms   use this latency instead of Options' range
//	X-Mock-Stream-Cut: 1    abort the connection mid-answer (after half of
//	                        the chunks of a stream, half of the body of a
//	                        plain answer); "0" never cuts
//	X-Mock-Completion-Tokens: 3000
//	                        the completion_tokens of this answer's usage
//
// Statistics are exact and safe for concurrent use. Counters never lose
// anything; the per-request records (arrival, end, status, tokens) are a
// ring of the most recent Options.MaxRecords (default 1e6, 40 MB), so
// MaxInWindow and MaxTokensInWindow cover those and Stats.Dropped says how
// many fell out.
//
// Client reads and resets the statistics of a vendor running elsewhere and
// starts and ends its outages;
// tests in other packages start one on loopback with mockvendortest.Start.
package mockvendor
