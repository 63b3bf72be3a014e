package main

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/server"
)

// stderrOf runs f with os.Stderr captured.
func stderrOf(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = w
	defer func() { os.Stderr = saved }()
	out := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		out <- string(b)
	}()
	f()
	w.Close()
	return <-out
}

func TestServeBadConfig(t *testing.T) {
	for name, value := range map[string]string{
		"SLUICE_RATE":         "fast",
		"SLUICE_CONCURRENCY":  "none",
		"SLUICE_UPSTREAM_URL": "",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("SLUICE_UPSTREAM_URL", "http://vendor")
			t.Setenv(name, value)
			var code int
			out := stderrOf(t, func() { code = runServe(nil) })
			if code == 0 || strings.Count(out, "\n") != 1 || !strings.Contains(out, name) {
				t.Errorf("%s=%q: exit %d, stderr %q", name, value, code, out)
			}
		})
	}
	t.Setenv("SLUICE_UPSTREAM_URL", "http://vendor")
	var code int
	out := stderrOf(t, func() { code = runServe([]string{"--rate", "fast"}) })
	if code == 0 || !strings.Contains(out, "SLUICE_RATE") {
		t.Errorf("--rate fast: exit %d, stderr %q", code, out)
	}
}

func TestServeHelp(t *testing.T) {
	var code int
	out := stderrOf(t, func() { code = runServe([]string{"--help"}) })
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	for _, v := range server.Variables() {
		if !strings.Contains(out, v.Name+", --"+v.Flag()+" (default: ") {
			t.Errorf("--help does not document %s", v.Name)
		}
	}
}
