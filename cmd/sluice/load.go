package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/load"
	"github.com/sluicehq/sluice/internal/mockvendor"
)

func init() {
	register("load", command{
		summary: "drive concurrent chat completions against gateways and check the vendor's view",
		run:     runLoad,
		env:     func() []string { return []string{"SLUICE_LOAD_KEY"} },
	})
}

func runLoad(args []string) int {
	fs := newToolFlagSet("load", `Sends small chat completions from concurrent clients, round-robin over the
gateway URLs, for --duration or --requests, and prints a summary. With
--vendor-stats (a mockvendor's /stats) it resets the vendor's statistics
first and checks the invariants against them at the end:
  I1 max in flight <= C, I2 max arrivals in any window W <= B + R*W,
  I4 no 500 and no transport error, and reports I5 utilisation.
Limits not given are taken from the limit the mockvendor enforces, if any.
With --plot FILE.svg (or .png) it draws what it measured: arrivals per
window at the vendor against B + R*W, calls in flight at the vendor against
C (both need --vendor-stats), and queue wait percentiles over time.
Exit status: 0 ok, 1 a check FAILed or no request got an answer, 2 bad
flags, 130 interrupted.`)
	urls := fs.String("url", "", "comma-separated gateway base `URLs` (required); /v1/chat/completions is appended", "")
	clients := fs.Int("clients", load.DefaultClients, "concurrent clients", "")
	duration := fs.Duration("duration", load.DefaultDuration, "stop starting requests after this long (with --requests: only if given)", "")
	requests := fs.Int("requests", 0, "stop after `N` requests (0: no count)", "")
	stream := fs.Bool("stream", false, `ask for "stream": true and read the SSE answers`, "")
	key := fs.String("key", "", "client `key`, sent as Authorization: Bearer", "SLUICE_LOAD_KEY")
	model := fs.String("model", load.DefaultModel, "model asked for", "")
	cancelFrac := fs.Float64("cancel", 0, "`fraction` of requests cancelled at a random moment before completion", "")
	timeout := fs.Duration("timeout", load.DefaultTimeout, "bound on each request", "")
	vendor := fs.String("vendor-stats", "", "mockvendor statistics `URL`, e.g. http://mock:9090/stats", "")
	rate := fs.String("rate", "", "vendor `rate` R for I2, e.g. 10/s or 60/m", "")
	burst := fs.Int("burst", 0, "vendor burst `B` for I2 (0: the vendor's, else 1)", "")
	conc := fs.Int("concurrency", 0, "vendor concurrency `C` for I1", "")
	window := fs.Duration("window", time.Second, "window `W` for I2", "")
	plotPath := fs.String("plot", "", "draw the run into `FILE`.svg or FILE.png", "")
	asJSON := fs.Bool("json", false, "print the report as JSON on stdout", "")
	quiet := fs.Bool("quiet", false, "no progress on stderr", "")
	if code, ok := fs.parse(args); !ok {
		return code
	}

	cfg := load.Config{
		Clients: *clients, Duration: *duration, Requests: *requests, Stream: *stream, Key: *key,
		Model: *model, Cancel: *cancelFrac, Timeout: *timeout,
	}
	for _, u := range strings.Split(*urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.URLs = append(cfg.URLs, u)
		}
	}
	if len(cfg.URLs) == 0 {
		return fs.fail("--url is required (see --help)")
	}
	durationGiven := false
	fs.Visit(func(f *flag.Flag) { durationGiven = durationGiven || f.Name == "duration" })
	if *requests > 0 && !durationGiven {
		cfg.Duration = 0
	}
	switch {
	case *clients < 1:
		return fs.fail("--clients must be at least 1")
	case *duration <= 0 && *requests <= 0:
		return fs.fail("--duration must be positive, or give --requests")
	case *requests < 0 || *burst < 0 || *conc < 0:
		return fs.fail("--requests, --burst and --concurrency must not be negative")
	case *timeout <= 0 || *window <= 0:
		return fs.fail("--timeout and --window must be positive")
	case !(*cancelFrac >= 0 && *cancelFrac <= 1):
		return fs.fail("--cancel %v: want a fraction in [0,1]", *cancelFrac)
	}
	if ext := strings.ToLower(filepath.Ext(*plotPath)); *plotPath != "" && ext != ".svg" && ext != ".png" {
		return fs.fail("--plot %q: the name must end in .svg or .png", *plotPath)
	}
	if *vendor != "" {
		vc := &load.VendorCheck{StatsURL: *vendor, Concurrency: *conc, Burst: *burst, Window: *window}
		if *plotPath != "" {
			vc.Step = load.DefaultPlotStep
		}
		if *rate != "" {
			var err error
			if vc.Rate, vc.Period, err = mockvendor.ParseRate(*rate); err != nil {
				return fs.fail("--rate: %v", err)
			}
		}
		cfg.Vendor = vc
	} else if *rate != "" || *burst != 0 || *conc != 0 {
		return fs.fail("--rate, --burst and --concurrency need --vendor-stats")
	}
	if !*quiet {
		cfg.Progress = os.Stderr
		cfg.Live = isTerminal(os.Stderr)
	}

	if err := cfg.Validate(); err != nil {
		return fs.fail("%v", strings.TrimPrefix(err.Error(), "load: "))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := load.Run(ctx, cfg)
	if rep == nil {
		fmt.Fprintf(os.Stderr, "sluice %v\n", err) // "sluice load: ..."
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		rep.WriteText(os.Stdout)
	}
	plotFailed := false
	if *plotPath != "" {
		if perr := load.PlotFile(*plotPath, rep); perr != nil {
			fmt.Fprintf(os.Stderr, "sluice %v\n", perr)
			plotFailed = true
		} else if !*quiet {
			fmt.Fprintf(os.Stderr, "sluice load: plot written to %s\n", *plotPath)
		}
	}
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "sluice %v\n", err)
		return 1
	case plotFailed:
		return 1
	case rep.Failed():
		return 1
	case rep.Interrupted:
		return 130
	case len(rep.Statuses) == 0:
		fmt.Fprintln(os.Stderr, "sluice load: no request got an answer")
		return 1
	}
	return 0
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
