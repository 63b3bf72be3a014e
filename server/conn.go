package server

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Limits of a connection to the gateway: its request headers must arrive
// within readHeaderTimeout and take at most maxHeaderBytes.
const (
	readHeaderTimeout = 10 * time.Second
	maxHeaderBytes    = 32 << 10
)

// connLimit caps the connections open on a listener (SLUICE_MAX_CONNS). At
// the cap, a new connection makes room by closing the oldest one with no
// request in progress (still silent, or idle between requests): idle
// connections, however many a client opens, cannot lock real requests out.
// When every connection has a request in progress, the new one is answered
// 503 and closed. Its connState is the http.Server's ConnState hook.
type connLimit struct {
	net.Listener
	max     int
	metrics *metrics

	mu    sync.Mutex
	conns map[net.Conn]*connInfo
}

type connInfo struct {
	busy  bool      // a request is in progress
	since time.Time // when it last became idle
}

func newConnLimit(ln net.Listener, maxConns int, m *metrics) *connLimit {
	return &connLimit{Listener: ln, max: maxConns, metrics: m, conns: map[net.Conn]*connInfo{}}
}

// Accept returns the next connection, within the cap.
func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if len(l.conns) >= l.max {
			victim := l.oldestIdle()
			if victim == nil {
				l.mu.Unlock()
				l.metrics.connRejections.WithLabelValues("refused").Inc()
				go refuse(c)
				continue
			}
			delete(l.conns, victim)
			_ = victim.Close()
			l.metrics.connRejections.WithLabelValues("idle_closed").Inc()
		}
		sc := &shapedConn{Conn: c}
		l.conns[sc] = &connInfo{since: time.Now()}
		l.mu.Unlock()
		return sc, nil
	}
}

// oldestIdle returns the connection idle the longest, or nil.
func (l *connLimit) oldestIdle() net.Conn {
	var oldest net.Conn
	var since time.Time
	for c, info := range l.conns {
		if !info.busy && (oldest == nil || info.since.Before(since)) {
			oldest, since = c, info.since
		}
	}
	return oldest
}

func (l *connLimit) connState(c net.Conn, st http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	info, ok := l.conns[c]
	if !ok {
		return
	}
	switch st {
	case http.StateActive:
		info.busy = true
	case http.StateIdle:
		info.busy, info.since = false, time.Now()
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, c)
	}
}

// refusal is the answer to a connection beyond the cap.
var refusal = func() []byte {
	body := `{"error":{"message":"this gateway replica has as many connections as it accepts; retry shortly","type":"server_error","code":"overloaded"}}`
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

func refuse(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(refusal)
	_ = c.Close()
}

// netHTTPErrorHeaders follow the status line of the answers net/http writes
// itself, before any handler runs, to a request it cannot parse (431 for
// too many header bytes, 400, 501 for an unknown transfer encoding).
const netHTTPErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// shapedConn is a connection to a client whose net/http-made error answers
// are rewritten in the OpenAI error shape, like every other answer of the
// gateway. net/http writes each of them whole, in one Write, straight to the
// connection.
type shapedConn struct{ net.Conn }

func (c *shapedConn) Write(p []byte) (int, error) {
	if !bytes.HasPrefix(p, []byte("HTTP/1.1 ")) || len(p) < 12 {
		return c.Conn.Write(p)
	}
	line, _, ok := bytes.Cut(p, []byte(netHTTPErrorHeaders))
	if !ok || bytes.ContainsAny(line, "\r\n") {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(shapeNetHTTPError(string(line[9:12]))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseWrite half-closes a TCP connection, as net/http does after its 431
// so the client reads the answer before the connection goes.
func (c *shapedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// shapeNetHTTPError is the answer for one of net/http's own error statuses.
func shapeNetHTTPError(code string) []byte {
	var e errorBody
	e.Error.Type = "invalid_request_error"
	switch code {
	case "431":
		e.Error.Code, e.Error.Message = "request_header_fields_too_large", "the request headers are larger than this gateway accepts"
	case "501":
		e.Error.Code, e.Error.Message = "unsupported_transfer_encoding", "the request's transfer encoding is not supported"
	default:
		code = "400"
		e.Error.Code, e.Error.Message = "malformed_request", "the request is not valid HTTP/1.1"
	}
	body, _ := json.Marshal(e)
	n, _ := strconv.Atoi(code)
	return []byte("HTTP/1.1 " + code + " " + http.StatusText(n) + "\r\nContent-Type: application/json\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
}
