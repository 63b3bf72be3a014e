package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
)

func init() {
	register("demo", command{
		summary: "try sluice in one command: the gateway in front of a built-in mock vendor",
		run:     runDemo,
	})
}

const demoIntro = `Runs sluice serve in front of a built-in mock vendor (latency 100ms-500ms,
5% answers 500, 2% answers 429, streams of 8 chunks 50ms apart; its
statistics at the URL it logs, /stats), on an embedded Redis unless
SLUICE_REDIS_URL is set. Nothing else to install:

  go run ./cmd/sluice demo
  curl -s localhost:8080/v1/chat/completions -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
  curl -sN localhost:8080/v1/chat/completions -d '{"model":"m","stream":true,"messages":[]}'

The demo's own defaults are listed below; every variable works as for serve.`

func runDemo(args []string) int {
	vendor, err := mockvendor.New(mockvendor.Options{
		LatencyMin: 100 * time.Millisecond, LatencyMax: 500 * time.Millisecond,
		ErrorRate: 0.05, RateLimitRate: 0.02,
		StreamChunks: 8, StreamInterval: 50 * time.Millisecond,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice demo:", err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice demo: mock vendor:", err)
		return 1
	}
	mock := &http.Server{Handler: vendor, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = mock.Serve(ln) }()
	defer mock.Close()

	// The demo's defaults: the mock vendor, and a budget large enough to
	// play with.
	mockURL := "http://" + ln.Addr().String()
	cfg, code, ok := loadServeConfig("demo", demoIntro, args, map[string]string{
		"SLUICE_UPSTREAM_URL":    mockURL,
		"SLUICE_RATE":            "10/s",
		"SLUICE_BURST":           "2",
		"SLUICE_FORWARD_HEADERS": "X-Mock-Status,X-Mock-Latency,X-Mock-Stream-Cut",
	})
	if !ok {
		return code
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if cfg.UpstreamURL.String() == mockURL {
		log.Info("demo: mock vendor running", "url", mockURL, "stats", mockURL+"/stats")
	}
	return runGateway(cfg, log)
}
