// Package mockvendortest starts a mockvendor.Vendor on loopback for tests.
package mockvendortest

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sluicehq/sluice/internal/mockvendor"
)

// Server is a running mock vendor, closed by the test's Cleanup.
type Server struct {
	// URL is the base URL, e.g. "http://127.0.0.1:40123"; the vendor's
	// paths (/v1/chat/completions, /stats, ...) are appended to it.
	URL string
	// Vendor is the handler, for its Stats, Reset and Options.
	Vendor *mockvendor.Vendor
	// HTTP is the underlying test server.
	HTTP *httptest.Server
}

// Start starts a vendor configured by opt on a loopback port and closes it
// when the test ends; invalid options fail the test.
func Start(t testing.TB, opt mockvendor.Options) *Server {
	t.Helper()
	v, err := mockvendor.New(opt)
	if err != nil {
		t.Fatalf("mockvendortest: %v", err)
	}
	hs := httptest.NewServer(v)
	t.Cleanup(hs.Close)
	return &Server{URL: hs.URL, Vendor: v, HTTP: hs}
}

// Stats returns a snapshot of the vendor's statistics.
func (s *Server) Stats() mockvendor.Stats { return s.Vendor.Stats() }

// Reset starts a new statistics epoch.
func (s *Server) Reset() { s.Vendor.Reset() }

// Client returns an HTTP client for the server.
func (s *Server) Client() *http.Client { return s.HTTP.Client() }
