package status_test

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sluicehq/sluice/internal/redistest"
	"github.com/sluicehq/sluice/internal/status"
	"github.com/sluicehq/sluice/limiter"
	"github.com/sluicehq/sluice/semaphore"
)

// chromium returns the path of Debian's chromium. Without it the test is
// skipped, or fails when SLUICETEST_REQUIRE_DOCKER is set (CI installs it).
func chromium(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("SLUICETEST_REQUIRE_DOCKER") != "" {
		t.Fatal("chromium is not installed (apt-get install chromium): the status page's browser test cannot run")
	}
	t.Skip("chromium is not installed (apt-get install chromium)")
	return ""
}

// artifacts is where the test leaves files for people: $SLUICETEST_ARTIFACTS
// when set, else a temporary directory.
func artifacts(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("SLUICETEST_ARTIFACTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

// The status page in a real browser: while load runs against the budget,
// the figures it shows (redrawn by its own script from status.json) follow
// what Redis holds, and its charts draw the history.
func TestPageInBrowser(t *testing.T) {
	exe := chromium(t)
	rdb := redistest.New(t).Client(t)
	budget := redistest.Budget(t)
	rate := limiter.Limit{Rate: 20, Burst: 3, Period: time.Second}
	opt := semaphore.Options{Size: 3, Rate: rate}
	st := newStatus(t, rdb, []status.Budget{{Name: budget, Rate: rate, Concurrency: 3}}, status.Options{Interval: 250 * time.Millisecond})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = st.Run(ctx) }()
	web := httptest.NewServer(st.Handler())
	defer web.Close()

	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1000, 560),
	)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	browser, cancelTimeout := context.WithTimeout(browser, 60*time.Second)
	defer cancelTimeout()
	if err := chromedp.Do(browser, chromedp.Navigate(web.URL+"/status"), chromedp.WaitVisible("#b0-leases")); err != nil {
		t.Fatalf("loading the page: %v", err)
	}
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(browser, chromedp.Text("#"+id))
		if err != nil {
			t.Fatalf("reading #%s: %v", id, err)
		}
		return s
	}
	// waitFor polls the page until cond holds (the page redraws each
	// second; there is no event to wait on from outside it).
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("the page never showed %s: leases %q, queue %q, grants %q", what, text("b0-leases"), text("b0-queue"), text("b0-grants"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("an idle budget", func() bool { return text("b0-leases") == "0" && text("b0-queue") == "0" })

	// Load: six callers for three slots, each holding its lease for a
	// while (the scripts count the grants).
	sem := newLoad(t, rdb, budget, opt).sem
	loadCtx, stopLoad := context.WithCancel(ctx)
	var workers sync.WaitGroup
	for i := range 6 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for loadCtx.Err() == nil {
				lease, err := sem.Acquire(loadCtx)
				if err != nil {
					continue
				}
				select { // the vendor call
				case <-loadCtx.Done():
				case <-time.After(time.Duration(80+40*i) * time.Millisecond):
				}
				_ = lease.Release(context.Background())
			}
		}()
	}
	seen := map[string]bool{}
	began := time.Now()
	waitFor("leases held and grants counted under load", func() bool {
		seen[text("b0-leases")] = true
		g, err := strconv.ParseFloat(text("b0-grants"), 64)
		// At least 5s of load, for the charts of the screenshot.
		return err == nil && g > 0 && (seen["1"] || seen["2"] || seen["3"]) && time.Since(began) > 5*time.Second
	})
	waitFor("a queue under load", func() bool { return text("b0-queue") != "0" })
	stopLoad()
	workers.Wait()

	// Then a fixed state: three leases held, two callers queued.
	ld := newLoad(t, rdb, budget, opt)
	ld.hold(3)
	ld.queue(ctx, 2)
	waitFor("3 leases and 2 queued", func() bool { return text("b0-leases") == "3" && text("b0-queue") == "2" })
	points, err := chromedp.Run(browser, chromedp.AttributeValue("#b0-chart-leases polyline", "data-points"))
	if err != nil || !points.Exists {
		t.Fatalf("the leases chart: %v", err)
	}
	if n, _ := strconv.Atoi(points.Value); n < 5 {
		t.Fatalf("the leases chart has %s points", points.Value)
	}
	if g := text("b0-grants"); g == "–" {
		t.Fatal("no grant rate shown")
	}

	png, err := chromedp.Run(browser, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(artifacts(t), "status-page.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}
