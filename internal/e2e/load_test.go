package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/invariant"
)

// record is the outcome of one request, as its client saw it.
type record struct {
	gw         int // index of the gateway it was sent to
	start, end time.Time
	// cancelled: the client cancelled it on purpose before it completed
	// (no answer is expected then).
	cancelled bool
	// status is the HTTP status; 0 when no answer came (see err).
	status int
	// code is error.code of an error answer.
	code string
	// retryAfter is the Retry-After header of the answer.
	retryAfter string
	// err says why no well-formed answer came: a transport error, or a
	// body that is not what the status promises. Empty when well formed.
	err string
}

func (r record) String() string {
	s := fmt.Sprintf("gw%d %s-%s: ", r.gw+1, r.start.Format("15:04:05.000"), r.end.Format("05.000"))
	switch {
	case r.cancelled:
		return s + "cancelled by its client"
	case r.status == 0:
		return s + "no answer: " + r.err
	}
	s += fmt.Sprintf("%d %s (Retry-After %q)", r.status, r.code, r.retryAfter)
	if r.err != "" {
		s += " MALFORMED: " + r.err
	}
	return s
}

// normal says why r is not an answer a client of a loaded, healthy gateway
// may get: a chat.completion 200, or a 503 queue_timeout with Retry-After;
// "" when it is one. Cancelled requests need no answer.
func normal(r record) string {
	switch {
	case r.cancelled:
		return ""
	case r.err != "":
		return r.err
	case r.status == http.StatusOK:
		return ""
	case r.status == http.StatusServiceUnavailable && r.code == "queue_timeout":
		if r.retryAfter == "" {
			return "503 queue_timeout without Retry-After"
		}
		return ""
	}
	return "unexpected answer"
}

// chatBody is the request every client sends.
var chatBody = []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`)

// loadOptions configure a load.
type loadOptions struct {
	gateways []*proc
	key      string  // client key
	clients  int     // concurrent clients, one request at a time each
	cancel   float64 // fraction of requests cancelled by their client
	// timeout bounds each request: above the gateways' SLA, so that their
	// answer is what the client sees.
	timeout time.Duration
	// backoff is a client's pause after an answer other than 200, as
	// polite clients do (a queue timeout must not become a busy loop).
	backoff time.Duration
}

// load is a set of clients, each sending one request at a time to the
// gateways in turn (skipping disabled ones, as a load balancer would),
// until stop.
type load struct {
	opt  loadOptions
	off  []atomic.Bool
	next atomic.Uint64
	stop context.CancelFunc // stops starting requests
	wg   sync.WaitGroup

	mu   sync.Mutex
	recs []record
	est  time.Duration // moving average of completion times
}

// startLoad starts the clients.
func startLoad(opt loadOptions) *load {
	ctx, stop := context.WithCancel(context.Background())
	l := &load{opt: opt, off: make([]atomic.Bool, len(opt.gateways)), stop: stop, est: 300 * time.Millisecond}
	for range opt.clients {
		l.wg.Go(func() { l.client(ctx) })
	}
	return l
}

func (l *load) client(ctx context.Context) {
	for ctx.Err() == nil {
		gw := l.pick()
		if gw < 0 {
			return
		}
		// Requests are not cut by stop: they run to their answer.
		r := l.send(gw, rand.Float64() < l.opt.cancel, nil)
		l.mu.Lock()
		l.recs = append(l.recs, r)
		if r.status != 0 && !r.cancelled {
			l.est += (r.end.Sub(r.start) - l.est) / 8
		}
		l.mu.Unlock()
		if r.status != http.StatusOK && !r.cancelled {
			select {
			case <-ctx.Done():
			case <-time.After(l.opt.backoff):
			}
		}
	}
}

// pick returns the next gateway that is not disabled, or -1.
func (l *load) pick() int {
	for range len(l.off) {
		i := int(l.next.Add(1)-1) % len(l.off)
		if !l.off[i].Load() {
			return i
		}
	}
	return -1
}

// disable stops sending new requests to gateway i.
func (l *load) disable(i int) { l.off[i].Store(true) }

// cancelAfter returns when a cancelled request is cancelled: uniform in
// [0, E), E being the moving average of completion times, so that the
// moments cover the wait for admission and the vendor call alike.
func (l *load) cancelAfter() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return rand.N(max(l.est, 10*time.Millisecond))
}

// send sends one chat completion to gateway gw, with the extra headers h
// (may be nil), and checks its answer is well formed: a 2xx is a JSON
// chat.completion with choices, an error is {"error":{"message","type","code"}}.
func (l *load) send(gw int, cancel bool, h http.Header) record {
	r := record{gw: gw, start: time.Now()}
	ctx, stop := context.WithTimeout(context.Background(), l.opt.timeout)
	defer stop()
	var cancelled atomic.Bool
	if cancel {
		t := time.AfterFunc(l.cancelAfter(), func() {
			cancelled.Store(true)
			stop()
		})
		defer t.Stop()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.opt.gateways[gw].URL+"/v1/chat/completions", bytes.NewReader(chatBody))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.opt.key)
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := httpClient.Do(req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
	}
	r.end = time.Now()
	if err != nil {
		// Cancelled on purpose before the answer was read in full: that is
		// the client's doing, not the gateway's.
		r.cancelled = cancelled.Load()
		r.err = err.Error()
		return r
	}
	r.status = resp.StatusCode
	r.retryAfter = resp.Header.Get("Retry-After")
	r.code, r.err = invariant.Answer(resp.StatusCode, body)
	return r
}

// records returns the records of the requests finished so far.
func (l *load) records() []record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]record(nil), l.recs...)
}

// finish stops starting requests, waits for those in flight and returns
// all the records.
func (l *load) finish() []record {
	l.stop()
	l.wg.Wait()
	return l.records()
}
