package containertest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/invariant"
)

// Record is the outcome of one request, as its client saw it.
type Record struct {
	// Target is the gateway's name (gw1, ...).
	Target string
	// Start and End bound the request at the client.
	Start, End time.Time
	// Status is the HTTP status; 0 when no answer came (see Err).
	Status int
	// Code is error.code of an error answer.
	Code string
	// RetryAfter is the Retry-After header of the answer.
	RetryAfter string
	// Err says why the request got no well-formed answer: a transport
	// error, or a body that is not what the status promises. Empty when
	// the answer was well formed.
	Err string
}

// Latency is the time from sending the request to the end of its answer.
func (r Record) Latency() time.Duration { return r.End.Sub(r.Start) }

func (r Record) String() string {
	s := fmt.Sprintf("%s at +%s: ", r.Target, r.Start.Format("15:04:05.000"))
	if r.Status == 0 {
		return s + "no answer: " + r.Err + fmt.Sprintf(" (after %s)", r.Latency().Round(time.Millisecond))
	}
	s += fmt.Sprintf("%d %s in %s", r.Status, r.Code, r.Latency().Round(time.Millisecond))
	if r.Err != "" {
		s += " MALFORMED: " + r.Err
	}
	return s
}

// chatBody is the request every client sends.
var chatBody = []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`)

// Send sends one chat completion to gateway n with the extra headers h and
// returns its Record. It checks the answer is well formed: a 2xx is a JSON
// chat.completion with choices, an error is {"error":{"message","type","code"}}.
func (s *Stack) Send(ctx context.Context, n *Node, h http.Header) Record {
	rec := Record{Target: n.Name, Start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL+"/v1/chat/completions", bytes.NewReader(chatBody))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+ClientKey)
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := s.http.Do(req)
	if err != nil {
		rec.Err = err.Error()
		rec.End = time.Now()
		return rec
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	rec.End = time.Now()
	if err != nil {
		rec.Err = "reading the answer: " + err.Error()
		return rec
	}
	rec.Status = resp.StatusCode
	rec.RetryAfter = resp.Header.Get("Retry-After")
	rec.Code, rec.Err = invariant.Answer(resp.StatusCode, body)
	return rec
}

// Load is a set of clients, each sending one request at a time to the
// gateways in turn, until Stop. After an answer other than 200, or none, a
// client waits Backoff before its next request, as polite clients do (a
// queue timeout must not turn into a busy loop).
type Load struct {
	s       *Stack
	targets []*Node
	off     []atomic.Bool
	header  http.Header
	next    atomic.Uint64
	stop    context.CancelFunc
	wg      sync.WaitGroup

	mu   sync.Mutex
	recs []Record
}

// Backoff is the pause of a load client after an answer other than 200.
const Backoff = 100 * time.Millisecond

// clientTimeout bounds each request of a Load: above any gateway SLA used
// here, so the gateway's answer is what the client sees.
const clientTimeout = 30 * time.Second

// StartLoad starts clients sending to targets (all gateways if none) with
// extra headers h (may be nil).
func (s *Stack) StartLoad(clients int, h http.Header, targets ...*Node) *Load {
	if len(targets) == 0 {
		targets = s.Gateways
	}
	ctx, stop := context.WithCancel(context.Background())
	l := &Load{s: s, targets: targets, off: make([]atomic.Bool, len(targets)), header: h, stop: stop}
	for range clients {
		l.wg.Go(func() { l.client(ctx) })
	}
	return l
}

func (l *Load) client(ctx context.Context) {
	for ctx.Err() == nil {
		n := l.pick()
		if n == nil {
			return
		}
		// Requests are not cut by Stop: they run to their answer.
		rctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
		rec := l.s.Send(rctx, n, l.header)
		cancel()
		l.mu.Lock()
		l.recs = append(l.recs, rec)
		l.mu.Unlock()
		if rec.Status != http.StatusOK {
			select {
			case <-ctx.Done():
			case <-time.After(Backoff):
			}
		}
	}
}

// pick returns the next target that is not disabled, or nil.
func (l *Load) pick() *Node {
	for range len(l.targets) {
		i := int(l.next.Add(1)-1) % len(l.targets)
		if !l.off[i].Load() {
			return l.targets[i]
		}
	}
	return nil
}

// Disable stops sending new requests to n, as a load balancer does with a
// replica that fails its health checks.
func (l *Load) Disable(n *Node) { l.set(n, true) }

// Enable sends requests to n again.
func (l *Load) Enable(n *Node) { l.set(n, false) }

func (l *Load) set(n *Node, off bool) {
	for i, t := range l.targets {
		if t == n {
			l.off[i].Store(off)
		}
	}
}

// Records returns the records of the requests finished so far.
func (l *Load) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.recs...)
}

// Stop stops starting requests, waits for those in flight and returns all
// the records.
func (l *Load) Stop() []Record {
	l.stop()
	l.wg.Wait()
	return l.Records()
}
