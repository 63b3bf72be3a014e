package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/load"
)

// TestDemoIntroAndEnforcedBudget runs the demo's wiring (mock vendor, embedded
// Redis, gateway), checks the block it prints, and drives `sluice load`'s
// package against it as the block says: the mock vendor enforces the demo's
// budget, so I1 and I2 are checked (PASS), not skipped.
func TestDemoIntroAndEnforcedBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("runs load for a few seconds")
	}
	t.Setenv("SLUICE_REDIS_URL", "") // the embedded Redis, as a newcomer gets
	t.Setenv("SLUICE_UPSTREAM_URL", "")
	t.Setenv("SLUICE_API_KEYS", "")
	var stderr bytes.Buffer
	d, code, ok := startDemo([]string{"--listen", "127.0.0.1:0"}, &stderr)
	if !ok {
		t.Fatalf("startDemo: exit %d: %s", code, stderr.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		d.close()
	})

	var intro bytes.Buffer
	d.writeIntro(&intro)
	out := intro.String()
	for _, want := range []string{
		"gateway        " + d.gatewayURL + "\n",
		"SDK base URL   " + d.gatewayURL + "/v1\n",
		"vendor stats   " + d.statsURL,
		"curl -s " + d.gatewayURL + "/v1/chat/completions",
		"load --url " + d.gatewayURL + " --vendor-stats " + d.statsURL + " ",
		"--plot budget.svg",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the intro lacks %q:\n%s", want, out)
		}
	}
	if !strings.HasPrefix(d.gatewayURL, "http://127.0.0.1:") || !strings.HasSuffix(d.statsURL, "/stats") {
		t.Fatalf("gateway %q, stats %q", d.gatewayURL, d.statsURL)
	}

	// What the intro's load line does, shorter.
	rep, err := load.Run(t.Context(), load.Config{
		URLs:     []string{d.gatewayURL},
		Clients:  6,
		Duration: 3 * time.Second,
		Vendor:   &load.VendorCheck{StatsURL: d.statsURL},
	})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Logf("sluice load against the demo:\n%s", text.String())
	// I1 and I2 are what sluice promises at the vendor. The mock's own
	// per-arrival check (its jitter allowance is 20ms) is logged above: on
	// a busy machine under -race the delay between a grant and its send can
	// exceed that, which the README's "Network jitter after the grant"
	// states.
	for _, name := range []string{"I1 max in flight", "I2 max arrivals in 1s"} {
		found := false
		for _, c := range rep.Checks {
			if c.Name == name {
				found = true
				if c.Result != load.Pass {
					t.Errorf("%s: %s (%g <= %g, %s)", name, c.Result, c.Got, c.Limit, c.Detail)
				}
			}
		}
		if !found {
			t.Errorf("no check %q", name)
		}
	}
	if b := rep.Budget; b == nil || b.Concurrency != 3 || b.PerSecond != 10 || b.Burst != 2 {
		t.Errorf("the budget judged by is %+v, want the demo's C=3 R=10/s B=2", b)
	}
}

// TestDemoBusyPort: a busy port fails at once with a hint, before anything
// says it runs.
func TestDemoBusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	t.Setenv("SLUICE_UPSTREAM_URL", "")
	var stderr bytes.Buffer
	d, code, ok := startDemo([]string{"--listen", busy.Addr().String()}, &stderr)
	if ok {
		d.close()
		t.Fatal("the demo started on a busy port")
	}
	msg := stderr.String()
	if code != 1 || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, busy.Addr().String()) ||
		!strings.Contains(msg, "--listen") || strings.Contains(msg, "demo is running") {
		t.Errorf("exit %d, stderr %q", code, msg)
	}
}
