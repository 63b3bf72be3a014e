// Package server is the sluice gateway (sluice serve): an Echo application
// that forwards OpenAI-compatible /v1/* requests to one vendor, so that many
// replicas share one vendor budget through Redis.
//
// Every request goes down the stack of a guarded vendor call, in its order,
// one file per layer:
//
//	listener: SLUICE_MAX_CONNS, 32 KiB headers          conn.go
//	request ID, JSON access log, panic recovery        observe.go (every route)
//	body limit                                          413
//	client auth (SLUICE_API_KEYS)                       401       auth.go
//	requests in progress, buffered bytes                503 replica, 429 client
//	per-user limit (SLUICE_USER_RATE, redis_rate)       429 + Retry-After, REJECT   userlimit.go
//	request deadline (SLUICE_REQUEST_TIMEOUT)           504       deadline.go
//	body read within the caps, checked in one pass      400 413 415   request.go
//	the guarded vendor call (package guard's Transport)  call.go
//	for each attempt (SLUICE_MAX_ATTEMPTS):
//	  queue deadline (SLUICE_QUEUE_TIMEOUT)             503 + Retry-After, never retried
//	  admission: one token of the cluster bucket AND one slot of the
//	    cluster lease semaphore, in one script (admitter)   WAIT, fail closed: 503   admit.go
//	  call deadline (SLUICE_CALL_TIMEOUT), the vendor call's context derived
//	    from the request AND the lease; HTTP client with dial, TLS, header,
//	    idle and per-host limits; no redirects, no SDK, no hidden retries
//	  lease released (shielded) BEFORE the backoff sleep
//	full-jitter backoff, at least the vendor's Retry-After
//	vendor failed after the attempts                    502
//	the answer, vendor headers by an allowlist          respond.go
//
// The guarded call is the one sluice offers Go services as a library
// (package guard): the gateway forwards through the same Transport, and
// what stays here is what only a gateway does (auth, client caps, body
// checks, header allowlists, the status table, writing the answer). It
// takes a context and no Echo type: a request goes down it once and its
// answer comes back up once.
//
// Retried: network errors, vendor timeouts, the call deadline, 5xx, 408 and
// 429. Never retried: the queue deadline (the system is overloaded), other
// 4xx (passed through as the vendor sent them, except 401, 403 and 407:
// the vendor refused the vendor key, which is answered 502
// upstream_auth_failed with the vendor's message in the log only), a
// client gone, and a request
// whose deadline, after the backoff, leaves less than a whole call deadline.
//
// Non-streaming answers are read whole (up to 32 MiB) under the call
// deadline, the lease is released, and only then is the answer written to the
// client, so a slow client never holds a vendor slot. A request body is
// buffered too (bounded by SLUICE_MAX_BODY, and by the buffered bytes a
// replica and a client may hold), so every attempt resends it.
//
// Streams ("stream": true; any text/event-stream answer) are passed through
// one read at a time, with a flush after each, while the lease is held; the
// call deadline covers the whole stream, and each write to the client has
// SLUICE_WRITE_TIMEOUT but never runs past the call deadline, so a client
// that stops reading frees the slot by then. Once the status line is sent nothing
// can be retried or changed: a stream that breaks simply ends, and is counted
// and logged as stream_cut (the vendor stopped without "data: [DONE]", or the
// read failed), as client_closed_request, or as request_timeout. A client
// that goes away cancels the vendor call and frees the slot at once.
//
// Answers that went through admission carry X-Sluice-Queue-Wait: the
// milliseconds spent waiting for admission, all attempts together.
//
// Whatever ends a request (answer, client gone, deadline, panic), the lease
// is released with its own short deadline even after cancellation, and the
// request is counted and logged. Errors use the OpenAI shape
// {"error":{"message","type","code"}} with client-facing sentences only;
// keys are never logged (the log has an HMAC key id) nor returned. A panic
// is answered 503 internal_error, not 500 (invariant I4). A client that went
// away gets no answer: its connection is closed.
//
// One case delays the release, never the answer: when the gateway cancels a
// call the vendor is still working on (client gone, call or request
// deadline, shutdown), the vendor learns of it one network hop later, so the
// lease is held SLUICE_CANCEL_GRACE longer, in the background, lest the next
// call arrive first and the vendor count C+1.
//
// The gateway fails closed: without Redis it cannot keep the budget, so it
// answers 503 backend_unavailable fast (with Retry-After), and /readyz is red
// until Redis is back. A request whose call to Redis fails, or is not
// answered by its queue deadline, gets backend_unavailable; one that was only
// waiting in the queue when Redis went silent cannot tell that from a full
// budget and gets queue_timeout (503 all the same, at its deadline).
//
// On SIGTERM (Serve's context ending) the gateway stops accepting and lets
// the requests in flight finish for SLUICE_SHUTDOWN_TIMEOUT. Then it cuts
// the rest: each is answered 503 shutting_down (a stream under way just
// ends) and releases its lease itself, within a couple of seconds; only then
// are the admitter and Redis closed.
//
// There is no fail-open switch on purpose: replicas admitting on their own
// would break I1 and I2 at the vendor exactly when things are already going
// wrong.
package server
