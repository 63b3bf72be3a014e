package status

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// The page: server-rendered, then redrawn each second by its own small
// script from status.json. Script and style are inline (the page works
// offline, with no other request than the JSON) and allowed by their hashes
// alone in the Content-Security-Policy.
var (
	//go:embed page/page.html
	pageHTML string
	//go:embed page/page.js
	pageJS string
	//go:embed page/page.css
	pageCSS string

	pageTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
		"fig":     fig,
		"seconds": seconds,
	}).Parse(pageHTML))
	pageCSP = "default-src 'none'; script-src '" + cspHash(pageJS) + "'; style-src '" + cspHash(pageCSS) +
		"'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

func cspHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// Handler returns the handler of GET /status (the page) and GET
// /status.json (its data, a Snapshot). Mount it at both paths; the page
// fetches status.json relative to its own address.
func (s *Status) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", s.servePage)
	mux.HandleFunc("GET /status.json", s.serveJSON)
	return mux
}

func (s *Status) serveJSON(w http.ResponseWriter, _ *http.Request) {
	body, err := json.Marshal(s.Snapshot())
	if err != nil { // only plain numbers and strings: cannot happen
		http.Error(w, "status: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(body)
}

// pageData is what the template renders.
type pageData struct {
	Snapshot
	Last   []Point // each budget's last point, zero when none
	Script template.JS
	Style  template.CSS
}

func (s *Status) servePage(w http.ResponseWriter, _ *http.Request) {
	d := pageData{Snapshot: s.Snapshot(), Script: template.JS(pageJS), Style: template.CSS(pageCSS)}
	for _, b := range d.Budgets {
		var p Point
		if n := len(b.Samples); n > 0 {
			p = b.Samples[n-1]
		}
		d.Last = append(d.Last, p)
	}
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, d); err != nil {
		http.Error(w, "status: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("Referrer-Policy", "no-referrer")
	_, _ = buf.WriteTo(w)
}

// fig formats a figure for the page: "–" for none (a nil pointer), whole
// numbers without decimals, others with one.
func fig(v any) string {
	switch v := v.(type) {
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case *int:
		if v != nil {
			return strconv.Itoa(*v)
		}
	case float64:
		if v == math.Trunc(v) {
			return strconv.FormatFloat(v, 'f', 0, 64)
		}
		return strconv.FormatFloat(v, 'f', 1, 64)
	case *float64:
		if v != nil {
			return fig(*v)
		}
	}
	return "–"
}

// seconds formats a duration in seconds as the page shows it.
func seconds(v any) string {
	switch v := v.(type) {
	case *float64:
		if v == nil {
			return "–"
		}
		return seconds(*v)
	case float64:
		if v == 0 {
			return "0 s"
		}
		if v < 10 {
			return strings.TrimSuffix(fmt.Sprintf("%.2f", v), "0") + " s"
		}
		return fmt.Sprintf("%.0f s", v)
	}
	return "–"
}
