package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/server"
)

func init() {
	register("demo", command{
		summary: "try sluice in one command: the gateway in front of a built-in mock vendor",
		run:     runDemo,
		env:     serveEnv,
	})
}

const demoIntro = `Runs sluice serve in front of a built-in mock vendor (latency 100ms-500ms,
5% answers 500, 2% answers 429, streams of 8 chunks 50ms apart) that
enforces the demo's budget as a strict vendor would, on an embedded Redis
unless SLUICE_REDIS_URL is set. Nothing else to install:

  go run ./cmd/sluice demo

It then prints the gateway's URL, a curl line, the base URL for an OpenAI
SDK, the mock vendor's statistics URL and a sluice load line that checks
the budget held, at the vendor.

The demo's own defaults are listed below; every variable works as for serve.`

// demoFallback are the demo's defaults: a budget small enough to see it
// hold, large enough to play with.
var demoFallback = map[string]string{
	"SLUICE_RATE":            "10/s",
	"SLUICE_BURST":           "2",
	"SLUICE_FORWARD_HEADERS": "X-Mock-Status,X-Mock-Latency,X-Mock-Stream-Cut",
}

func runDemo(args []string) int {
	d, code, ok := startDemo(args, os.Stderr)
	if !ok {
		return code
	}
	defer d.close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d.writeIntro(os.Stdout)
	if err := d.serve(ctx); err != nil {
		d.log.Error("sluice demo stopped on an error", "error", err.Error())
		return 1
	}
	d.log.Info("sluice demo stopped")
	return 0
}

// demo is the demo's wiring, listening but not yet serving.
type demo struct {
	cfg        server.Config
	log        *slog.Logger
	ln         net.Listener // the gateway's
	gatewayURL string
	// statsURL is the mock vendor's /stats; empty when the upstream is
	// another vendor (SLUICE_UPSTREAM_URL set).
	statsURL string
	closers  []func()
}

// startDemo reads the configuration, takes the gateway's port (failing
// with a hint when it is busy, before anything claims to run), starts the
// mock vendor enforcing the configured budget; serve then builds and runs the gateway. When
// ok is false the command exits with code, the reason written to stderr.
func startDemo(args []string, stderr io.Writer) (d *demo, code int, ok bool) {
	d = &demo{}
	fail := func(format string, a ...any) (*demo, int, bool) {
		fmt.Fprintf(stderr, "sluice demo: "+format+"\n", a...)
		d.close()
		return nil, 1, false
	}
	// The mock vendor's port first: its URL is the default upstream.
	mockLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail("mock vendor: %v", err)
	}
	d.closers = append(d.closers, func() { mockLn.Close() })
	mockURL := "http://" + mockLn.Addr().String()
	fallback := map[string]string{"SLUICE_UPSTREAM_URL": mockURL}
	for k, v := range demoFallback {
		fallback[k] = v
	}
	if d.cfg, code, ok = loadServeConfig("demo", demoIntro, args, fallback); !ok {
		d.close()
		return nil, code, false
	}
	d.log = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: d.cfg.LogLevel}))

	if d.ln, err = server.Listen(d.cfg, d.log); err != nil {
		hint := ""
		if errors.Is(err, syscall.EADDRINUSE) {
			hint = " (another sluice may hold it: stop that one, or pick another port, e.g. --listen 127.0.0.1:8081)"
		}
		return fail("cannot listen on %s: %v%s", d.cfg.Listen, err, hint)
	}
	d.closers = append(d.closers, func() { d.ln.Close() })
	d.gatewayURL = "http://" + d.ln.Addr().String()
	if u, err := healthURL(d.ln.Addr().String()); err == nil { // a wildcard address becomes 127.0.0.1
		d.gatewayURL = strings.TrimSuffix(u, "/healthz")
	}

	if d.cfg.UpstreamURL.String() == mockURL {
		vendor, err := mockvendor.New(demoVendorOptions(d.cfg))
		if err != nil {
			return fail("mock vendor: %v", err)
		}
		mock := &http.Server{Handler: vendor, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = mock.Serve(mockLn) }()
		d.closers = append(d.closers, func() { mock.Close() })
		d.statsURL = mockURL + "/stats"
	} else {
		mockLn.Close()
	}

	return d, 0, true
}

// serve runs the gateway on the demo's listener until ctx ends.
func (d *demo) serve(ctx context.Context) error { return server.Serve(ctx, d.cfg, d.log, d.ln) }

// demoVendorOptions are the mock vendor's: some latency, some errors, and
// the gateway's budget enforced, as a strict vendor would (with the jitter
// allowance of DefaultJitter), so that `sluice load` checks I1 and I2
// against it.
func demoVendorOptions(cfg server.Config) mockvendor.Options {
	return mockvendor.Options{
		LatencyMin: 100 * time.Millisecond, LatencyMax: 500 * time.Millisecond,
		ErrorRate: 0.05, RateLimitRate: 0.02,
		StreamChunks: 8, StreamInterval: 50 * time.Millisecond,
		Limit: mockvendor.Limit{
			Concurrency: cfg.Concurrency,
			Rate:        cfg.Rate.Rate,
			Period:      cfg.Rate.Period,
			Burst:       cfg.Rate.Burst,
			Jitter:      mockvendor.DefaultJitter,
		},
	}
}

// close stops what startDemo started, last first.
func (d *demo) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// writeIntro writes what a newcomer does next: the URLs, a curl line, the
// SDK's base URL and a load line. Client keys are never printed.
func (d *demo) writeIntro(w io.Writer) {
	auth, keyEnv := "", ""
	if len(d.cfg.APIKeys) > 0 {
		auth = ` -H "Authorization: Bearer $SLUICE_KEY"`
		keyEnv = "SLUICE_LOAD_KEY=$SLUICE_KEY "
	}
	self := "sluice"
	if strings.Contains(os.Args[0], "go-build") {
		self = "go run ./cmd/sluice"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nsluice demo is running: vendor budget %s, at most %d calls in flight.\n\n",
		d.cfg.Rate.String(), d.cfg.Concurrency)
	fmt.Fprintf(&b, "  gateway        %s\n", d.gatewayURL)
	fmt.Fprintf(&b, "  SDK base URL   %s/v1\n", d.gatewayURL)
	if d.statsURL != "" {
		fmt.Fprintf(&b, "  vendor stats   %s   (the mock vendor; it enforces the same budget)\n", d.statsURL)
	}
	if len(d.cfg.APIKeys) > 0 {
		b.WriteString("  client key     one of SLUICE_API_KEYS, below as $SLUICE_KEY\n")
	}
	fmt.Fprintf(&b, "\nA chat completion:\n  curl -s %s/v1/chat/completions%s -H 'Content-Type: application/json' \\\n    -d '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}'\n",
		d.gatewayURL, auth)
	if d.statsURL != "" {
		fmt.Fprintf(&b, "\nLoad above the budget, checked at the vendor (I1, I2), drawn into budget.svg:\n  %s%s load --url %s --vendor-stats %s --clients 20 --duration 20s --plot budget.svg\n",
			keyEnv, self, d.gatewayURL, d.statsURL)
	}
	b.WriteString("\nCtrl-C stops it.\n\n")
	io.WriteString(w, b.String())
}
