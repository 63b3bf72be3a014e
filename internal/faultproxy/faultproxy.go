// Package faultproxy is a TCP proxy between Redis clients and a Redis server
// that injects network faults for tests, on command boundaries and without
// sleeps.
//
// The proxy parses the RESP requests that pass through (pipelined batches
// included) and pairs each reply with its request, so a test can name the
// command a fault applies to with a [Match] (a command name and an argument
// substring, e.g. the SHA of a script) and install a one-shot [Rule]:
//
//   - [Proxy.DropReply]: Redis runs the command, but the client never gets
//     the reply: the proxy closes the client's connection instead (a reply
//     lost on the way back; go-redis then retries on a new connection, if its
//     MaxRetries allows).
//   - [Proxy.Hold] and [Proxy.Delay]: the request waits at the proxy, until
//     a channel is closed or for a duration, then goes on to Redis, even if
//     the client has given up on it and closed its connection meanwhile.
//   - [Proxy.BlackHoleNext] and [Proxy.BlackHole]: the connection stops
//     forwarding both ways and stays open, with no FIN and no RST: a
//     half-open TCP connection, as a NAT or load balancer leaves behind when
//     it forgets a flow (e.g. the connection of a SUBSCRIBE).
//   - [Proxy.Watch]: nothing changes; the rule only signals.
//
// A command fires at most one rule: the earliest installed of those that
// match. So rules for the same commands apply in the order they were
// installed: DropReply then Hold of the same Match drops the reply of the
// next such command and holds the one after it (e.g. go-redis's retry).
// Every rule signals when its command reaches the proxy ([Rule.Matched]) and
// when Redis answers it ([Rule.Done]), so tests wait on events, not on time.
// [Proxy.Count] counts the commands that match, whatever the rules.
//
// Replies are paired with requests on connections that are not in pub/sub
// mode; after SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE a connection's replies
// pass through unpaired, so DropReply and Done do not apply to its later
// commands (Matched, Hold, Delay, black holes and counts do). RESP2 and
// RESP3 are both understood.
//
// A Proxy is safe for concurrent use.
package faultproxy

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Match selects commands. The zero Match selects every command.
type Match struct {
	// Cmd is the command name, case-insensitive (e.g. "EVALSHA"); "" for
	// any command.
	Cmd string
	// Arg is a substring of one of the arguments after the command name
	// (e.g. a script's SHA, a key, an id); "" for any.
	Arg string
}

func (m Match) matches(args [][]byte) bool {
	if len(args) == 0 {
		return false
	}
	if m.Cmd != "" && !strings.EqualFold(m.Cmd, string(args[0])) {
		return false
	}
	if m.Arg == "" {
		return true
	}
	for _, a := range args[1:] {
		if bytes.Contains(a, []byte(m.Arg)) {
			return true
		}
	}
	return false
}

type ruleKind int

const (
	watch ruleKind = iota
	dropReply
	hold
	blackHole
)

// Rule is a one-shot fault (or watch) that applies to the next command
// matching its Match, on any connection.
type Rule struct {
	kind  ruleKind
	match Match
	until <-chan struct{} // hold: closed when the request may go on
	delay time.Duration   // hold: or after this long (when until is nil)

	matched, done         chan struct{}
	matchedOnce, doneOnce sync.Once
}

// Matched is closed when a command matching the rule reached the proxy (for
// Hold and Delay: when the hold began).
func (r *Rule) Matched() <-chan struct{} { return r.matched }

// Done is closed when Redis answered the command: its reply reached the
// proxy, whether it was then forwarded or dropped. It is never closed for a
// command that was black-holed or sent on a pub/sub connection.
func (r *Rule) Done() <-chan struct{} { return r.done }

func (r *Rule) markMatched() { r.matchedOnce.Do(func() { close(r.matched) }) }
func (r *Rule) markDone()    { r.doneOnce.Do(func() { close(r.done) }) }

// Counter counts the commands that match, from its creation on.
type Counter struct {
	match Match
	n     atomic.Int64
}

// Load returns the number of matching commands seen so far (counted when
// they reach the proxy, before Redis runs them).
func (c *Counter) Load() int64 { return c.n.Load() }

// historyLen is how many of a connection's first commands are remembered for
// [Proxy.BlackHole].
const historyLen = 64

// Proxy is a fault-injecting TCP proxy in front of one Redis server.
type Proxy struct {
	target string
	ln     net.Listener
	done   chan struct{} // closed by Close

	mu       sync.Mutex
	rules    []*Rule
	counters []*Counter
	conns    map[*conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// Start listens on a free loopback port and forwards every connection to the
// Redis server at target (host:port).
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, done: make(chan struct{}), conns: map[*conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// New is Start for a test: it fails the test on error and closes the proxy
// when the test ends.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := Start(target)
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// Addr returns the proxy's host:port, for the client's Options.Addr.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops listening, closes every connection (black-holed ones too) and
// lets held requests go nowhere. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	err := p.ln.Close()
	conns := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	p.wg.Wait()
	return err
}

// DropReply makes Redis run the next command matching m while its client
// never gets the reply: the proxy closes the client's connection instead of
// forwarding it (replies to commands sent before it on that connection are
// forwarded; those sent after it in the same pipeline are lost too).
func (p *Proxy) DropReply(m Match) *Rule { return p.add(&Rule{kind: dropReply, match: m}) }

// Hold keeps the next request matching m at the proxy until until is closed,
// then sends it on to Redis, even if its client has closed the connection
// meanwhile. Later requests on that connection wait behind it.
func (p *Proxy) Hold(m Match, until <-chan struct{}) *Rule {
	return p.add(&Rule{kind: hold, match: m, until: until})
}

// Delay is Hold for a duration.
func (p *Proxy) Delay(m Match, d time.Duration) *Rule {
	return p.add(&Rule{kind: hold, match: m, delay: d})
}

// BlackHoleNext black-holes the connection that sends the next command
// matching m, from that command on (which never reaches Redis): nothing more
// is forwarded either way, and both sockets stay open, silently.
func (p *Proxy) BlackHoleNext(m Match) *Rule { return p.add(&Rule{kind: blackHole, match: m}) }

// Watch changes nothing: its Matched and Done signal the next command
// matching m.
func (p *Proxy) Watch(m Match) *Rule { return p.add(&Rule{kind: watch, match: m}) }

// BlackHole black-holes, at once, every open connection that has sent a
// command matching m among its first commands (e.g. Match{Cmd: "SUBSCRIBE"}
// for the connection of a subscription), and returns how many it did.
func (p *Proxy) BlackHole(m Match) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if c.sent(m) && c.blackHole() {
			n++
		}
	}
	return n
}

// Count returns a counter of the commands matching m from now on.
func (p *Proxy) Count(m Match) *Counter {
	c := &Counter{match: m}
	p.mu.Lock()
	p.counters = append(p.counters, c)
	p.mu.Unlock()
	return c
}

func (p *Proxy) add(r *Rule) *Rule {
	r.matched, r.done = make(chan struct{}), make(chan struct{})
	p.mu.Lock()
	p.rules = append(p.rules, r)
	p.mu.Unlock()
	return r
}

// take counts a command and removes and returns the rule it fires: the
// earliest installed that matches, if any.
func (p *Proxy) take(args [][]byte) *Rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.counters {
		if c.match.matches(args) {
			c.n.Add(1)
		}
	}
	for i, r := range p.rules {
		if r.match.matches(args) {
			p.rules = append(p.rules[:i], p.rules[i+1:]...)
			return r
		}
	}
	return nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		c := &conn{p: p, client: client, server: server}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = client.Close()
			_ = server.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go c.up()
		go c.down()
	}
}

// conn is one client connection and its connection to Redis.
type conn struct {
	p              *Proxy
	client, server net.Conn

	mu      sync.Mutex
	pending []*request // forwarded requests awaiting their replies, in order
	pubsub  bool       // replies are no longer paired with requests
	history [][][]byte // the first historyLen commands
	holed   bool       // black-holed
	closed  bool
}

// request is what the reply to a forwarded request must do.
type request struct {
	drop bool
	done []*Rule
}

// up forwards requests from the client to Redis, applying the rules.
func (c *conn) up() {
	defer c.p.wg.Done()
	r := bufio.NewReader(c.client)
	w := bufio.NewWriter(c.server)
	for {
		raw, args, err := readCommand(r)
		if err != nil {
			if !c.isHoled() {
				// The client is gone: let Redis finish what it was sent
				// (its replies still drain), then it closes.
				_ = w.Flush()
				if tc, ok := c.server.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				} else {
					_ = c.server.Close()
				}
			}
			return
		}
		if len(args) == 0 || c.isHoled() {
			continue
		}
		c.remember(args)
		req := &request{}
		if rule := c.p.take(args); rule != nil {
			rule.markMatched()
			switch rule.kind {
			case hold:
				if err := w.Flush(); err != nil {
					return
				}
				if !c.wait(rule) {
					return
				}
			case dropReply:
				req.drop = true
			case blackHole:
				if c.blackHole() {
					continue
				}
			}
			req.done = []*Rule{rule}
		}
		if !c.track(req, args) {
			req.done = nil // unpaired: Done never fires
		}
		if _, err := w.Write(raw); err != nil {
			return
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// wait holds a request for rule; false if the proxy closed meanwhile.
func (c *conn) wait(rule *Rule) bool {
	until := rule.until
	if until == nil {
		t := time.NewTimer(rule.delay)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-c.p.done:
			return false
		}
	}
	select {
	case <-until:
		return true
	case <-c.p.done:
		return false
	}
}

// track queues req to be paired with its reply, unless the connection is in
// pub/sub mode; a subscribing command puts it in pub/sub mode.
func (c *conn) track(req *request, args [][]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pubsub {
		return false
	}
	switch strings.ToUpper(string(args[0])) {
	case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE":
		c.pubsub = true
		return false
	}
	c.pending = append(c.pending, req)
	return true
}

// down forwards replies from Redis to the client, dropping the ones that
// rules say to drop.
func (c *conn) down() {
	defer c.p.wg.Done()
	r := bufio.NewReader(c.server)
	w := bufio.NewWriter(c.client)
	for {
		raw, push, err := readReply(r)
		if err != nil {
			if !c.isHoled() {
				_ = w.Flush()
				c.close()
			}
			return
		}
		req := c.reply(push)
		if c.isHoled() {
			continue
		}
		if req != nil {
			for _, rule := range req.done {
				rule.markDone()
			}
			if req.drop {
				_ = w.Flush() // the replies before it
				c.close()
				return
			}
		}
		_, err = w.Write(raw)
		if err == nil && r.Buffered() == 0 {
			err = w.Flush()
		}
		if err != nil { // the client is gone
			c.close()
			return
		}
	}
}

// reply returns the request a reply answers, or nil if it answers none that
// is tracked.
func (c *conn) reply(push bool) *request {
	c.mu.Lock()
	defer c.mu.Unlock()
	if push || c.pubsub || len(c.pending) == 0 {
		return nil
	}
	req := c.pending[0]
	c.pending[0] = nil
	c.pending = c.pending[1:]
	return req
}

func (c *conn) remember(args [][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.history) < historyLen {
		c.history = append(c.history, args) // args are never reused
	}
}

// sent reports whether one of the first commands of c matches m.
func (c *conn) sent(m Match) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, args := range c.history {
		if m.matches(args) {
			return true
		}
	}
	return false
}

// blackHole stops forwarding on c both ways, leaving both sockets open. It
// reports whether c was open and not black-holed yet.
func (c *conn) blackHole() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holed || c.closed {
		return false
	}
	c.holed = true
	return true
}

func (c *conn) isHoled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holed
}

// close closes both sockets (black-holed ones only when the proxy closes).
func (c *conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	_ = c.client.Close()
	_ = c.server.Close()
	c.p.mu.Lock()
	delete(c.p.conns, c)
	c.p.mu.Unlock()
}
