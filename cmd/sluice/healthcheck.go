package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func init() {
	register("healthcheck", command{
		summary: "exit 0 when a local sluice answers its health URL (for container HEALTHCHECKs)",
		run:     runHealthcheck,
		env:     func() []string { return []string{"SLUICE_HEALTHCHECK_URL"} },
	})
}

// runHealthcheck is the image's HEALTHCHECK: the image has no shell and no
// curl, so the binary checks itself.
func runHealthcheck(args []string) int {
	fs := flag.NewFlagSet("sluice healthcheck", flag.ContinueOnError)
	url := fs.String("url", "", "URL to GET (default: http://127.0.0.1:PORT/healthz, PORT from $SLUICE_LISTEN, else 8080)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: sluice healthcheck [flags]

GETs a health URL of a sluice running on this host and exits 0 on a 2xx
answer, 1 otherwise: an exec-form container HEALTHCHECK for an image without
a shell. $SLUICE_HEALTHCHECK_URL, if set, replaces the default URL.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "sluice healthcheck: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	target := *url
	if target == "" {
		target = os.Getenv("SLUICE_HEALTHCHECK_URL")
	}
	if target == "" {
		var err error
		if target, err = healthURL(os.Getenv("SLUICE_LISTEN")); err != nil {
			fmt.Fprintln(os.Stderr, "sluice healthcheck:", err)
			return 2
		}
	}
	if err := checkHealth(target, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "sluice healthcheck:", err)
		return 1
	}
	return 0
}

// healthURL returns the /healthz URL of a gateway listening on listen (the
// SLUICE_LISTEN syntax, default ":8080"); a wildcard host becomes 127.0.0.1.
func healthURL(listen string) (string, error) {
	if listen == "" {
		listen = ":8080"
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("SLUICE_LISTEN=%q: %v", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}

// checkHealth GETs target and wants a 2xx answer within timeout. It never
// uses a proxy from the environment: the target is local.
func checkHealth(target string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return nil
}
