package server

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
)

// apiError is an answer in the OpenAI error shape,
// {"error":{"message","type","code"}}. Its messages are written for clients:
// never a Go error string, a stack, or a key. Code doubles as the outcome of
// the request in logs and metrics.
type apiError struct {
	Status  int
	Type    string
	Code    string
	Message string
	// RetryAfter, when positive, is sent as a Retry-After header.
	RetryAfter time.Duration
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// errorBody is the JSON shape of an apiError.
type errorBody struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	} `json:"error"`
}

// statusClientClosed is the nginx convention for a client that went away
// before its answer: it only shows in logs and metrics, nobody receives it.
const statusClientClosed = 499

func errBadJSON(msg string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "invalid_json", Message: msg}
}

func errUnauthorized(code, msg string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Code: code, Message: msg}
}

var (
	errTooLarge = &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "request_too_large",
		Message: "the request body is larger than this gateway accepts"}
	errBadPath = &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "not_found",
		Message: "unknown path: this gateway serves /v1/..., /healthz, /readyz and /metrics"}
	errUserLimited = &apiError{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "rate_limit_exceeded",
		Message: "too many requests for this client: retry after the time in the Retry-After header"}
	errSLA = &apiError{Status: http.StatusGatewayTimeout, Type: "timeout_error", Code: "request_timeout",
		Message: "the request did not complete within the gateway's request deadline"}
	errClientClosed = &apiError{Status: statusClientClosed, Type: "invalid_request_error", Code: "client_closed_request",
		Message: "the client closed the request"}
	// errInternal answers a panic or an unexpected error. It is a 503, not
	// a 500 (invariant I4): the failure is confined to this request on this
	// replica, the lease is released, and the replica keeps serving, so the
	// client or its load balancer may try again. No Retry-After: a
	// deterministic bug should not be retried on a schedule we promise.
	errInternal = &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "internal_error",
		Message: "the gateway failed to handle this request; it has been logged"}
	// errShuttingDown answers the requests still running when the shutdown
	// deadline (SLUICE_SHUTDOWN_TIMEOUT) passes: this replica is going
	// away, another one can serve the request at once.
	errShuttingDown = &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "shutting_down",
		Message: "the gateway is shutting down and cut this request at its shutdown deadline; retry it", RetryAfter: time.Second}
	// errOverloaded answers a request beyond this replica's caps on
	// requests in progress or buffered bytes: another replica may serve it.
	errOverloaded = &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "overloaded",
		Message: "this gateway replica holds as many requests as it accepts; retry shortly", RetryAfter: time.Second}
	// errClientOverloaded answers a request beyond the client's share of
	// those caps.
	errClientOverloaded = &apiError{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "too_many_requests_in_progress",
		Message: "this client has as many requests in progress as the gateway accepts; retry when one has ended", RetryAfter: time.Second}
	errEncoding = &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Code: "unsupported_content_encoding",
		Message: "send the request body without Content-Encoding"}
	// errBodyTimeout answers a body still arriving at the read timeout.
	errBodyTimeout = &apiError{Status: http.StatusRequestTimeout, Type: "invalid_request_error", Code: "request_body_timeout",
		Message: "the request body did not arrive in time"}
	// errUpstreamAuth answers a vendor 401, 403 or 407: the vendor refused
	// the gateway's vendor key, which is the operator's problem, not the
	// client's; the vendor's message stays in the log.
	errUpstreamAuth = &apiError{Status: http.StatusBadGateway, Type: "upstream_error", Code: "upstream_auth_failed",
		Message: "the vendor refused the gateway's credentials; the operator has been told in the log"}
	errNotReady = &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "not_ready",
		Message: "not ready: the coordination store is unreachable or failing"}
)

// errQueueTimeout answers a request that cannot START a vendor call within
// the queue deadline: the system is overloaded, so it fails fast and is never
// retried by the gateway. Retry-After suggests coming back after one queue
// deadline.
func errQueueTimeout(queueTimeout time.Duration) *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "queue_timeout",
		Message:    "the vendor budget is saturated: the call could not start within the queue deadline; retry later",
		RetryAfter: queueTimeout}
}

// errBackend answers a request that the gateway cannot admit because its
// coordination store (Redis) does not answer: it fails closed, with the same
// Retry-After as a queue timeout.
func errBackend(retryAfter time.Duration) *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "backend_unavailable",
		Message:    "the gateway cannot reach its coordination store, so it cannot admit calls to the vendor; try again later",
		RetryAfter: retryAfter}
}

// errVendorFailed answers a request whose vendor attempts all failed.
func errVendorFailed(attempts int, last string) *apiError {
	msg := "the vendor failed after " + strconv.Itoa(attempts) + " attempt"
	if attempts > 1 {
		msg += "s"
	}
	return &apiError{Status: http.StatusBadGateway, Type: "upstream_error", Code: "upstream_failed", Message: msg + ": " + last}
}

// writeError writes e in the OpenAI error shape, unless the response was
// already committed (a stream under way), where nothing can be changed.
func writeError(c echo.Context, e *apiError) {
	if c.Response().Committed {
		return
	}
	if e.Status == http.StatusUnauthorized {
		c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="sluice"`)
	}
	if e.RetryAfter > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(e.RetryAfter.Seconds())))))
	}
	var body errorBody
	body.Error.Message, body.Error.Type, body.Error.Code = e.Message, e.Type, e.Code
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(e.Status)
		return
	}
	_ = c.JSON(e.Status, body)
}

// asAPIError turns any error a handler returned into the answer to send:
// Echo's own errors (unknown route, wrong method) keep their status in the
// OpenAI shape; anything else is unexpected and answered as errInternal.
func asAPIError(err error) (e *apiError, unexpected bool) {
	if errors.As(err, &e) {
		return e, false
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusNotFound:
			return errBadPath, false
		case http.StatusMethodNotAllowed:
			return &apiError{Status: he.Code, Type: "invalid_request_error", Code: "method_not_allowed",
				Message: "this method is not allowed on this path"}, false
		case http.StatusRequestEntityTooLarge:
			return errTooLarge, false
		}
		if he.Code >= 400 && he.Code < 500 {
			return &apiError{Status: he.Code, Type: "invalid_request_error", Code: "invalid_request",
				Message: http.StatusText(he.Code)}, false
		}
	}
	return errInternal, true
}
