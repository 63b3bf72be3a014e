package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

// TestLoadPlot runs `sluice load --plot` against a mock vendor standing in
// for a gateway: the run passes its checks and the picture is written.
func TestLoadPlot(t *testing.T) {
	// Two clients and 5ms calls stay well inside the enforced budget.
	srv := mockvendortest.Start(t, mockvendor.Options{LatencyMin: 5 * time.Millisecond,
		Limit: mockvendor.Limit{Concurrency: 2, Rate: 1000, Burst: 10}})
	path := filepath.Join(t.TempDir(), "run.svg")
	code := runLoad([]string{"--url", srv.URL, "--vendor-stats", srv.URL + "/stats", "--clients", "2", "--requests", "20",
		"--quiet", "--json", "--plot", path})
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), "<svg") || !strings.Contains(string(b), "C = 2") {
		t.Errorf("plot: %v, %.200s", err, b)
	}
	if code := runLoad([]string{"--url", srv.URL, "--plot", "run.jpg"}); code != 2 {
		t.Errorf("--plot run.jpg: exit %d, want 2", code)
	}
}
