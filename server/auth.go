package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/labstack/echo/v4"
)

// authenticate checks the client's bearer key against SLUICE_API_KEYS, in
// constant time, and sets the client's identity: the HMAC of its key, or
// without auth its address (see clientAddr).
func (s *gateway) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		rec := recordOf(c)
		if len(s.keys) == 0 {
			rec.user = "ip-" + clientNet(s.clientAddr(c.Request()))
			return next(c)
		}
		scheme, key, _ := strings.Cut(c.Request().Header.Get(echo.HeaderAuthorization), " ")
		key = strings.TrimSpace(key)
		if !strings.EqualFold(scheme, "Bearer") || key == "" {
			return errUnauthorized("missing_api_key", "missing API key: send Authorization: Bearer <key>")
		}
		if !s.validKey(key) {
			return errUnauthorized("invalid_api_key", "invalid API key")
		}
		rec.user = "key-" + s.clientID(key)
		return next(c)
	}
}

// validKey compares the SHA-256 of key with the digest of every accepted key,
// without stopping at a match, so the time taken says nothing about the keys.
func (s *gateway) validKey(key string) bool {
	sum := sha256.Sum256([]byte(key))
	match := 0
	for _, k := range s.keys {
		match |= subtle.ConstantTimeCompare(sum[:], k[:])
	}
	return match == 1
}

// clientID is the id of a client key in logs and Redis key names: 64 bits
// of its HMAC-SHA-256 under the deployment's secret. Without the secret a
// log reader cannot test guesses of a weak key against it.
func (s *gateway) clientID(key string) string {
	m := hmac.New(sha256.New, s.idSecret)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// idSecret returns the HMAC key of client ids: SLUICE_CLIENT_ID_SECRET,
// else one derived from the vendor key, else from the client keys. Every
// replica of a deployment derives the same one, and it is as secret as
// what it comes from.
func idSecret(cfg Config) []byte {
	h := sha256.New()
	h.Write([]byte("sluice client id\x00"))
	switch {
	case cfg.ClientIDSecret != "":
		h.Write([]byte(cfg.ClientIDSecret))
	case cfg.UpstreamAPIKey != "":
		h.Write([]byte(cfg.UpstreamAPIKey))
	default:
		for _, k := range cfg.APIKeys {
			h.Write([]byte(k))
			h.Write([]byte{0})
		}
	}
	return h.Sum(nil)
}

// clientAddr is the client's address: the direct peer, or, when the peer is
// a trusted proxy (SLUICE_TRUSTED_PROXIES), the rightmost X-Forwarded-For
// hop not in a trusted network. Hops left of that one were written by the
// client itself and are ignored. When every hop is trusted, the leftmost
// one is the client.
func (s *gateway) clientAddr(r *http.Request) netip.Addr {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := peer.Addr().Unmap()
	if !s.trusted(addr) {
		return addr
	}
	values := r.Header.Values(echo.HeaderXForwardedFor)
	for i := len(values) - 1; i >= 0; i-- {
		hops := strings.Split(values[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			hop, err := parseHop(hops[j])
			if err != nil {
				return addr // a trusted proxy wrote no address: its peer is the client
			}
			addr = hop
			if !s.trusted(hop) {
				return hop
			}
		}
	}
	return addr
}

// parseHop reads one X-Forwarded-For entry: an address, perhaps with a port
// or in brackets.
func parseHop(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	return a.Unmap(), err
}

func (s *gateway) trusted(a netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientNet is the identity of a client address: an IPv4 address, or the
// /64 of an IPv6 one (one host usually has a whole /64 to pick from).
func clientNet(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "unknown"
	case a.Is6():
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// isLoopback reports whether the host of a listen address is a loopback
// address (a wildcard or a name other than localhost is not).
func isLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
