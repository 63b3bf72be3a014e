package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
)

func TestMockVendorHelp(t *testing.T) {
	fs, _ := mockVendorFlags()
	var b bytes.Buffer
	fs.usage(&b)
	for _, want := range []string{
		"--token-rate rate", "[$SLUICE_MOCK_TOKEN_RATE]", "--token-burst B", "--default-max-tokens n", "(default 1024)",
		"--completion-tokens n", "--completion-fraction fraction", "--outage-after duration", "--outage-for duration",
		"--outage-status status", "(default 500)", "POST /outage?for=20s&status=500", "x-ratelimit-*",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, b.String())
		}
	}
}

// TestMockVendorFlags: the new flags (and their variables) reach the
// vendor, which then enforces them.
func TestMockVendorFlags(t *testing.T) {
	t.Setenv("SLUICE_MOCK_TOKEN_BURST", "300")
	opt, listen, code, ok := mockVendorOptions([]string{"--listen", "127.0.0.1:0", "--token-rate", "100/h",
		"--default-max-tokens", "200", "--completion-fraction", "1.5", "--outage-after", "1h", "--outage-for", "20s", "--outage-status", "503"})
	if !ok {
		t.Fatalf("exit %d", code)
	}
	want := mockvendor.Limit{Burst: 1, Jitter: mockvendor.DefaultJitter, TokenRate: 100, TokenPeriod: time.Hour, TokenBurst: 300}
	if listen != "127.0.0.1:0" || opt.Limit != want || opt.DefaultMaxTokens != 200 || opt.CompletionFraction != 1.5 ||
		opt.Outage != (mockvendor.Outage{Start: time.Hour, Duration: 20 * time.Second, Status: 503}) {
		t.Fatalf("options %+v", opt)
	}
	v, err := mockvendor.New(opt)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(v)
	defer srv.Close()
	for i, want := range []int{200, 429} { // 200 tokens each from a bucket of 300
		resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"messages":[]}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want || resp.Header.Get("x-ratelimit-limit-tokens") != "300" {
			t.Errorf("request %d: %d, limit-tokens %q", i, resp.StatusCode, resp.Header.Get("x-ratelimit-limit-tokens"))
		}
	}
	if s := v.Stats(); s.TokensUsed != 300 || s.TokensSettled != 100 { // 1.5 x 200 completion tokens
		t.Errorf("used %d, settled %d", s.TokensUsed, s.TokensSettled)
	}
}

func TestMockVendorBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--token-rate", "lots"},
		{"--token-burst", "-1"},
		{"--default-max-tokens", "-5"},
		{"--completion-fraction", "NaN"},
		{"--outage-for", "20s", "--outage-status", "200"},
		{"--outage-after", "-1s"},
	} {
		var code int
		var ok bool
		out := stderrOf(t, func() { _, _, code, ok = mockVendorOptions(args) })
		if ok || code != 2 || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "sluice mockvendor: ") {
			t.Errorf("%q: ok %v, exit %d, stderr %q", args, ok, code, out)
		}
	}
}
