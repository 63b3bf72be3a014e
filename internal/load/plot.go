package load

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// DefaultPlotStep is the step of the vendor's time series that Plot draws
// (VendorCheck.Step).
const DefaultPlotStep = 100 * time.Millisecond

// ErrNothingToPlot is returned by Plot for a report with neither a vendor
// time series nor a queue wait.
var ErrNothingToPlot = errors.New("load: nothing to plot: no vendor time series (VendorCheck.Step) and no queue wait")

// Plot colours: what was measured, and the bound it must stay under.
var (
	measuredColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	boundColor    = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	waitColors    = []color.Color{
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
		color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	}
)

// Plot draws what the run measured, one panel above the other, over the
// run's time in seconds: the most arrivals at the vendor in a window W
// against I2's bound B + R*W, the calls in flight at the vendor against
// I1's C (both from the vendor's time series, Report.Vendor.Series), and
// the queue wait percentiles p50, p90 and p99 of the answers that ended in
// each second or so. A panel without data is left out. format is "svg" or
// "png".
func Plot(w io.Writer, format string, rep *Report) error {
	var panels []*plot.Plot
	if v := rep.Vendor; v != nil && len(v.Series) > 0 {
		arrivals, inFlight := make(plotter.XYs, len(v.Series)), make(plotter.XYs, len(v.Series))
		for i, p := range v.Series {
			arrivals[i] = plotter.XY{X: p.AtSeconds, Y: float64(p.MaxInWindow)}
			inFlight[i] = plotter.XY{X: p.AtSeconds, Y: float64(p.MaxInFlight)}
		}
		end := v.Series[len(v.Series)-1].AtSeconds + v.SeriesStepSeconds
		var b Budget
		if rep.Budget != nil {
			b = *rep.Budget
		}
		p, err := panel(fmt.Sprintf("I2: most arrivals at the vendor in a %s window", v.Window), "calls",
			series{"measured", arrivals, measuredColor, false})
		if err != nil {
			return err
		}
		if b.PerSecond > 0 {
			if err := addBound(p, fmt.Sprintf("B + R*W = %g", b.InWindow()), b.InWindow(), end); err != nil {
				return err
			}
		}
		panels = append(panels, p)
		if p, err = panel("I1: calls in flight at the vendor", "calls", series{"measured", inFlight, measuredColor, true}); err != nil {
			return err
		}
		if b.Concurrency > 0 {
			if err := addBound(p, fmt.Sprintf("C = %d", b.Concurrency), float64(b.Concurrency), end); err != nil {
				return err
			}
		}
		panels = append(panels, p)
	}
	if waits := waitPercentiles(rep.Records); len(waits[0]) > 0 {
		p, err := panel("Queue wait at the gateway, by the second the answer ended", "seconds",
			series{"p50", waits[0], waitColors[0], false}, series{"p90", waits[1], waitColors[1], false},
			series{"p99", waits[2], waitColors[2], false})
		if err != nil {
			return err
		}
		panels = append(panels, p)
	}
	if len(panels) == 0 {
		return ErrNothingToPlot
	}

	// One time axis for all panels.
	xmax := 0.0
	for _, p := range panels {
		xmax = max(xmax, p.X.Max)
	}
	for _, p := range panels {
		p.X.Min, p.X.Max = 0, xmax
	}
	const width, rowHeight = 8 * vg.Inch, 2.6 * vg.Inch
	height := rowHeight * vg.Length(len(panels))
	var c interface {
		vg.CanvasSizer
		io.WriterTo
	}
	switch format {
	case "svg":
		c = vgsvg.NewWith(vgsvg.UseWH(width, height), vgsvg.EmbedFonts(false))
	case "png":
		c = vgimg.PngCanvas{Canvas: vgimg.New(width, height)}
	default:
		return fmt.Errorf("load: plot format %q: want svg or png", format)
	}
	rows := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		rows[i] = []*plot.Plot{p}
	}
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(12), PadY: vg.Points(14)}
	for i, cs := range plot.Align(rows, tiles, dc) {
		rows[i][0].Draw(cs[0])
	}
	_, err := c.WriteTo(w)
	return err
}

// PlotFile writes Plot to path in the format its extension names, .svg or
// .png.
func PlotFile(path string, rep *Report) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	if format != "svg" && format != "png" {
		return fmt.Errorf("load: plot %q: the name must end in .svg or .png", path)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("load: plot: %w", err)
	}
	if err := Plot(f, format, rep); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// series is one line of a panel.
type series struct {
	name  string
	xys   plotter.XYs
	color color.Color
	steps bool // drawn as steps: a level held until the next point
}

// panel makes one plot with the given lines.
func panel(title, unit string, lines ...series) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds since the start of the run"
	p.Y.Label.Text = unit
	p.Y.Min = 0
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	for _, s := range lines {
		p.Y.Max = max(p.Y.Max, 1.3*maxY(s.xys)) // room for the legend
		l, err := plotter.NewLine(s.xys)
		if err != nil {
			return nil, fmt.Errorf("load: plot: %w", err)
		}
		l.Color = s.color
		l.Width = vg.Points(1.2)
		if s.steps {
			l.StepStyle = plotter.PostStep
		}
		p.Add(l)
		p.Legend.Add(s.name, l)
	}
	return p, nil
}

// addBound draws the horizontal line y = bound, dashed, across [0, end].
func addBound(p *plot.Plot, name string, bound, end float64) error {
	l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: bound}, {X: end, Y: bound}})
	if err != nil {
		return fmt.Errorf("load: plot: %w", err)
	}
	l.Color = boundColor
	l.Width = vg.Points(1.5)
	l.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	p.Add(l)
	p.Legend.Add(name, l)
	p.Y.Max = max(p.Y.Max, bound*1.4)
	return nil
}

func maxY(xys plotter.XYs) float64 {
	m := 0.0
	for _, xy := range xys {
		m = max(m, xy.Y)
	}
	return m
}

// waitPercentiles returns p50, p90 and p99 of the queue waits (in seconds) of
// the answers that ended in each bucket of the run, at the bucket's
// middle. Buckets are a second, or longer for long runs (60 at most).
func waitPercentiles(recs []Record) [3]plotter.XYs {
	var out [3]plotter.XYs
	if len(recs) == 0 {
		return out
	}
	t0, t1 := recs[0].Start, recs[0].End
	for _, r := range recs {
		t0, t1 = minTime(t0, r.Start), maxTime(t1, r.End)
	}
	bucket := max(time.Second, (t1.Sub(t0) / 60).Round(time.Second))
	by := make([][]time.Duration, int(t1.Sub(t0)/bucket)+1)
	for _, r := range recs {
		if r.HasQueueWait && r.Status != 0 {
			i := int(r.End.Sub(t0) / bucket)
			by[i] = append(by[i], r.QueueWait)
		}
	}
	for i, ws := range by {
		p := Summarize(ws)
		if p == nil {
			continue
		}
		x := (time.Duration(i)*bucket + bucket/2).Seconds()
		for j, d := range []time.Duration{p.P50, p.P90, p.P99} {
			out[j] = append(out[j], plotter.XY{X: x, Y: d.Seconds()})
		}
	}
	return out
}

func minTime(a, b time.Time) time.Time { return slices.MinFunc([]time.Time{a, b}, time.Time.Compare) }
func maxTime(a, b time.Time) time.Time { return slices.MaxFunc([]time.Time{a, b}, time.Time.Compare) }
