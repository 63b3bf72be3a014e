package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/load"
)

// startLoad starts clients clients, each sending one request at a time to
// the gateways in turn (named gw1, gw2, ... in the records), a fraction
// cancel of them cancelled by their client at a random moment, with a
// polite pause after any answer but a 200. Requests are not cut by Stop:
// they run to their answer. The load is stopped when the test ends, if not
// before.
func startLoad(t *testing.T, gws []*proc, key string, clients int, cancel float64) *load.Load {
	t.Helper()
	cfg := load.Config{
		Clients: clients,
		Key:     key,
		Cancel:  cancel,
		// Above the gateways' SLA, so that their answer is what the
		// client sees.
		Timeout: 30 * time.Second,
		// A queue timeout must not become a busy loop.
		Backoff: 100 * time.Millisecond,
	}
	for _, gw := range gws {
		cfg.URLs = append(cfg.URLs, gw.URL)
		cfg.Names = append(cfg.Names, gw.name)
	}
	l, err := load.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Stop()
		l.Close()
	})
	l.Start(context.Background())
	return l
}

// isOK matches the answers 200.
func isOK(r load.Record) bool { return r.Status == http.StatusOK }

// isCancelled matches the requests their client cancelled.
func isCancelled(r load.Record) bool { return r.Cancelled }
