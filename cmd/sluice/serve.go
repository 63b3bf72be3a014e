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
	})
}

func runServe(args []string) int {
	fs := flag.NewFlagSet("sluice serve", flag.ContinueOnError)
	flags := map[string]string{}
	for _, v := range server.Variables() {
		fs.Func(v.Flag(), v.Usage, func(s string) error {
			flags[v.Name] = s
			return nil
		})
	}
	fs.Usage = func() { serveUsage(fs.Output()) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "sluice serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := server.LoadConfig(func(name string) (string, bool) {
		if v, ok := flags[name]; ok {
			return v, true
		}
		return os.LookupEnv(name)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice serve:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := server.Run(ctx, cfg, log); err != nil {
		log.Error("sluice serve failed", "error", err.Error())
		return 1
	}
	log.Info("sluice serve stopped")
	return 0
}

func serveUsage(w io.Writer) {
	fmt.Fprint(w, `usage: sluice serve [flags]

Runs the gateway: POST /v1/chat/completions and every other /v1/* path go to
SLUICE_UPSTREAM_URL within the vendor budget shared, through Redis, by every
replica with the same SLUICE_REDIS_URL and SLUICE_BUDGET. Also serves
GET /healthz, /readyz and /metrics. SIGTERM drains requests in flight, then
releases every lease.

Configuration comes from the environment; each variable has a flag twin
that overrides it (prefer the environment for keys: flags show in ps).

`)
	for _, v := range server.Variables() {
		def := v.Default
		if def == "" {
			def = "unset"
		}
		fmt.Fprintf(w, "  %s, --%s (default: %s)\n      %s\n", v.Name, v.Flag(), def, v.Usage)
	}
}
