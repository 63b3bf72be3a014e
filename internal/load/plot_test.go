package load

import (
	"bytes"
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/mockvendor"
	"github.com/sluicehq/sluice/internal/mockvendor/mockvendortest"
)

// TestPlot runs a load through a stand-in gateway that reports its queue
// wait, in front of a vendor that enforces a budget, and plots it: the SVG
// is well-formed XML with the three panels and their bounds, the PNG
// decodes.
func TestPlot(t *testing.T) {
	vendor := mockvendortest.Start(t, mockvendor.Options{LatencyMin: 5 * ms, LatencyMax: 15 * ms,
		Limit: mockvendor.Limit{Concurrency: 4, Rate: 200, Burst: 5, Jitter: mockvendor.DefaultJitter}})
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, vendor.URL+r.URL.Path, r.Body)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set(HeaderQueueWait, "3.5")
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer gw.Close()
	rep, err := Run(t.Context(), Config{URLs: []string{gw.URL}, Clients: 3, Duration: 1500 * ms,
		Vendor: &VendorCheck{StatsURL: vendor.URL + "/stats", Step: DefaultPlotStep}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Budget == nil || rep.Budget.Concurrency != 4 || rep.Budget.Burst != 5 || len(rep.Vendor.Series) < 10 {
		t.Fatalf("budget %+v, %d points", rep.Budget, len(rep.Vendor.Series))
	}

	dir := t.TempDir()
	svgPath := filepath.Join(dir, "run.svg")
	if err := PlotFile(svgPath, rep); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(svgPath)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	var texts []string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v", err)
		}
		if cd, ok := tok.(xml.CharData); ok && strings.TrimSpace(string(cd)) != "" {
			texts = append(texts, string(cd))
		}
	}
	all := strings.Join(texts, "|")
	for _, want := range []string{"I2: most arrivals at the vendor in a 1s window", "B + R*W = 205", "I1: calls in flight at the vendor", "C = 4", "Queue wait", "p50", "p99"} {
		if !strings.Contains(all, want) {
			t.Errorf("the SVG lacks %q; its texts: %s", want, all)
		}
	}
	if n := strings.Count(string(b), "<path"); n < 10 {
		t.Errorf("the SVG has %d paths", n)
	}

	pngPath := filepath.Join(dir, "run.PNG")
	if err := PlotFile(pngPath, rep); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("the PNG does not decode: %v", err)
	}
	if r := img.Bounds(); r.Dx() < 500 || r.Dy() < 3*150 {
		t.Errorf("PNG of %v", r)
	}
}

func TestPlotErrors(t *testing.T) {
	if err := Plot(io.Discard, "svg", &Report{}); !errors.Is(err, ErrNothingToPlot) {
		t.Errorf("empty report: %v", err)
	}
	rep := &Report{Records: []Record{{Status: 200, HasQueueWait: true}}}
	if err := Plot(io.Discard, "gif", rep); err == nil {
		t.Error("gif accepted")
	}
	path := filepath.Join(t.TempDir(), "x.jpg")
	if err := PlotFile(path, rep); err == nil {
		t.Error(".jpg accepted")
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("a file was left for a refused format")
	}
	// Only queue waits: one panel.
	var b bytes.Buffer
	if err := Plot(&b, "svg", rep); err != nil || !strings.Contains(b.String(), "Queue wait") || strings.Contains(b.String(), "I1:") {
		t.Errorf("queue wait only: %v", err)
	}
}
