package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluicehq/sluice/server"
)

func init() {
	register("serve", command{
		summary: "run the gateway: /v1/* to the vendor within the shared budget",
		run:     runServe,
		env:     serveEnv,
	})
}

const serveIntro = `Runs the gateway: POST /v1/chat/completions and every other /v1/* path go to
SLUICE_UPSTREAM_URL within the vendor budget shared, through Redis, by every
replica with the same SLUICE_REDIS_URL and SLUICE_BUDGET. Also serves
GET /healthz, /readyz and /metrics (the last two on SLUICE_OPS_LISTEN when
set). SIGTERM drains requests in flight for SLUICE_SHUTDOWN_TIMEOUT, then
cuts the rest (503 shutting_down), releases every lease and exits 0.

Without SLUICE_API_KEYS it listens on loopback only (an open relay spends
your vendor key) unless SLUICE_ALLOW_NO_AUTH=true. What one replica holds is
bounded: connections (SLUICE_MAX_CONNS), request headers (32 KiB, within
10s), requests in progress and buffered body bytes, per replica (503) and per
client (429), and the time a client may take to read each chunk of an answer
(SLUICE_WRITE_TIMEOUT, never past the call deadline).`

func runServe(args []string) int {
	cfg, code, ok := loadServeConfig("serve", serveIntro, args, nil)
	if !ok {
		return code
	}
	return runGateway(cfg, slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel})))
}

// loadServeConfig reads the configuration of the gateway from flags, then
// the environment, then fallback (values for unset variables that replace
// the documented defaults). When ok is false the command exits with code:
// 0 after --help, 2 for bad flags or configuration, reported in one line.
func loadServeConfig(name, intro string, args []string, fallback map[string]string) (cfg server.Config, code int, ok bool) {
	fs := flag.NewFlagSet("sluice "+name, flag.ContinueOnError)
	flags := map[string]string{}
	for _, v := range server.Variables() {
		fs.Func(v.Flag(), v.Usage, func(s string) error {
			flags[v.Name] = s
			return nil
		})
	}
	fs.Usage = func() { serveUsage(fs.Output(), name, intro, fallback) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, 0, false
		}
		return cfg, 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "sluice %s: unexpected argument %q\n", name, fs.Arg(0))
		return cfg, 2, false
	}
	cfg, err := server.LoadConfig(func(v string) (string, bool) {
		if s, ok := flags[v]; ok {
			return s, true
		}
		if s, ok := os.LookupEnv(v); ok && s != "" {
			return s, true
		}
		s, ok := fallback[v]
		return s, ok
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "sluice %s: %v\n", name, err)
		return cfg, 2, false
	}
	return cfg, 0, true
}

// runGateway runs the gateway until SIGINT or SIGTERM, and returns the exit
// code: 0 after a graceful shutdown.
func runGateway(cfg server.Config, log *slog.Logger) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := server.Run(ctx, cfg, log); err != nil {
		log.Error("sluice stopped on an error", "error", err.Error())
		return 1
	}
	log.Info("sluice stopped")
	return 0
}

func serveUsage(w io.Writer, name, intro string, fallback map[string]string) {
	fmt.Fprintf(w, "usage: sluice %s [flags]\n\n%s\n\n", name, intro)
	fmt.Fprint(w, `Configuration comes from the environment; each variable has a flag twin
that overrides it (prefer the environment for keys: flags show in ps).

`)
	for _, v := range server.Variables() {
		def, ok := fallback[v.Name]
		if !ok {
			def = v.Default
		}
		if def == "" {
			def = "unset"
		}
		fmt.Fprintf(w, "  %s, --%s (default: %s)\n      %s\n", v.Name, v.Flag(), def, v.Usage)
	}
}
