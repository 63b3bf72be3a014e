package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds a child's start: until it listens, and until it is
// ready.
const startTimeout = 15 * time.Second

// buildSluice builds cmd/sluice into dir and returns the binary's path. It
// builds without -race whatever the test binary is: the gateway's own
// tests run with -race; here the timing of the budget is under test, and
// the detector would slow the replicas several times on a small machine.
func buildSluice(t *testing.T, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("e2e: building sluice needs the go command on PATH: %v", err)
	}
	bin := filepath.Join(dir, "sluice")
	began := time.Now()
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/sluice")
	cmd.Dir = filepath.Join("..", "..") // the module root, from internal/e2e
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("e2e: go build ./cmd/sluice: %v\n%s", err, out)
	}
	t.Logf("built sluice in %s", time.Since(began).Round(time.Millisecond))
	return bin
}

// proc is a child process of the sluice binary. Its output (stdout and
// stderr) is kept line by line.
type proc struct {
	name string
	// URL is its http:// base URL on loopback, read from its first log
	// lines (it listens on port 0: no port is chosen here, none can be
	// taken meanwhile).
	URL string

	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and its output is read
	err  error         // cmd.Wait's, once done

	mu    sync.Mutex
	lines []string
	addr  chan string // receives the listen address, once
}

// startProc runs `bin args...` with the environment env (added to this
// process's, without its SLUICE_* variables), and returns once it logs its
// listen address. The process is SIGKILLed when the test ends.
func startProc(t *testing.T, bin, name string, env map[string]string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{}), addr: make(chan string, 1)}
	p.cmd = exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SLUICE_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	w := &lineWriter{line: p.addLine}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = sysProcAttr()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("e2e: starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		w.flush()
		close(p.done)
	}()
	t.Cleanup(p.kill)

	select {
	case a := <-p.addr:
		p.URL = "http://" + a
	case <-p.done:
		t.Fatalf("e2e: %s exited before listening: %v\n%s", name, p.err, p.tail(40))
	case <-time.After(startTimeout):
		t.Fatalf("e2e: %s did not log its listen address within %s:\n%s", name, startTimeout, p.tail(40))
	}
	return p
}

// addLine keeps a line of output and looks in it for the listen address:
// `sluice serve` logs {"msg":"sluice serve listening","addr":...}, `sluice
// mockvendor` "sluice mockvendor: listening on ADDR (...)".
func (p *proc) addLine(line string) {
	p.mu.Lock()
	p.lines = append(p.lines, line)
	p.mu.Unlock()
	addr := ""
	if rest, ok := strings.CutPrefix(line, "sluice mockvendor: listening on "); ok {
		addr, _, _ = strings.Cut(rest, " ")
	} else if strings.HasPrefix(line, "{") {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "sluice serve listening" {
			addr = l.Addr
		}
	}
	if addr != "" {
		select {
		case p.addr <- addr:
		default:
		}
	}
}

// kill SIGKILLs the process (if it still runs) and waits until it exited.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// killedBySIGKILL reports whether the process has exited, killed by SIGKILL.
func (p *proc) killedBySIGKILL() bool {
	select {
	case <-p.done:
	default:
		return false
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// tail returns the last n lines of the output that say something: access
// log lines of answers 200 are left out.
func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for i := len(p.lines) - 1; i >= 0 && len(out) < n; i-- {
		if !strings.Contains(p.lines[i], `"outcome":"ok"`) {
			out = append(out, p.lines[i])
		}
	}
	var b strings.Builder
	for i := len(out) - 1; i >= 0; i-- {
		b.WriteString(out[i])
		b.WriteByte('\n')
	}
	return b.String()
}

// grep returns the lines of output that contain s.
func (p *proc) grep(s string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// lineWriter splits what is written to it into lines.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	line func(string)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(string(w.buf))
		w.buf = nil
	}
}

// httpClient reaches the children: no proxy from the environment, plenty
// of idle connections for the load's clients.
var httpClient = &http.Client{Transport: &http.Transport{
	Proxy:               nil,
	MaxIdleConns:        200,
	MaxIdleConnsPerHost: 100,
	IdleConnTimeout:     30 * time.Second,
}}

// get GETs u within 2s and returns the status and body.
func get(ctx context.Context, u string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, err
}

// waitOK polls GET u every 50ms until it answers 200, for at most d.
func waitOK(ctx context.Context, u string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last string
	for {
		status, body, err := get(ctx, u)
		if err == nil && status == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("%d %.200s %v", status, body, err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("GET %s: not 200 within %s (last: %s)", u, d, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metricSum returns the sum of every series of the metric name on a
// gateway's /metrics (0 when the metric has no series yet), and the series
// themselves.
func metricSum(ctx context.Context, gw *proc, name string) (float64, []string, error) {
	status, body, err := get(ctx, gw.URL+"/metrics")
	if err != nil {
		return 0, nil, err
	}
	if status != http.StatusOK {
		return 0, nil, fmt.Errorf("%s /metrics: %d", gw.name, status)
	}
	var sum float64
	var series []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return 0, nil, fmt.Errorf("%s /metrics: %q: %w", gw.name, line, err)
		}
		sum += v
		series = append(series, line)
	}
	return sum, series, sc.Err()
}

// serveHelp returns the output of `sluice serve --help`.
func serveHelp(t *testing.T, bin string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, "serve", "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("e2e: sluice serve --help: %v", err)
		}
	}
	return out.String()
}
