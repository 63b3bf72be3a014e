package containertest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/load"
)

// Backoff is the pause of a load client after an answer other than 200, as
// polite clients make (a queue timeout must not become a busy loop).
const Backoff = 100 * time.Millisecond

// clientTimeout bounds each request: above any gateway SLA used here, so
// the gateway's answer is what the client sees.
const clientTimeout = 30 * time.Second

// loadConfig is the configuration of the stack's clients: the gateways by
// their names, with the client key.
func (s *Stack) loadConfig(clients int, targets []*Node) load.Config {
	cfg := load.Config{Clients: clients, Key: ClientKey, Timeout: clientTimeout, Backoff: Backoff}
	for _, n := range targets {
		cfg.URLs = append(cfg.URLs, n.URL)
		cfg.Names = append(cfg.Names, n.Name)
	}
	return cfg
}

// newLoad returns a Load over targets, closed when the test ends.
func (s *Stack) newLoad(t testing.TB, clients int, targets []*Node) *load.Load {
	t.Helper()
	l, err := load.New(s.loadConfig(clients, targets))
	if err != nil {
		t.Fatalf("containertest: %v", err)
	}
	t.Cleanup(func() {
		l.Stop()
		l.Close()
	})
	return l
}

// Send sends one chat completion to gateway n with the extra headers h and
// returns its record; the answer is judged as load judges it
// (invariant.Answer).
func (s *Stack) Send(ctx context.Context, n *Node, h http.Header) load.Record {
	return s.client.Send(ctx, n.Name, h)
}

// StartLoad starts clients, each sending one request at a time to targets
// (all gateways if none) in turn, pausing Backoff after an answer other
// than 200. Stop does not cut the requests in flight: they run to their
// answer. Take a gateway out of rotation with Disable(node.Name).
func (s *Stack) StartLoad(clients int, targets ...*Node) *load.Load {
	if len(targets) == 0 {
		targets = s.Gateways
	}
	l := s.newLoad(s.t, clients, targets)
	l.Start(context.Background())
	return l
}
