package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// process is a redis-server child process listening on 127.0.0.1:port.
type process struct {
	bin    string // redis-server or redis-sentinel
	port   int
	dir    string // working directory, holds redis.log (and nodes.conf)
	ownDir bool   // dir was made here and is removed on terminate
	args   []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// processOptions tell startProcess how to make a cluster node, a replica or
// a Sentinel.
type processOptions struct {
	dir     string   // "" makes (and later removes) a temporary directory
	cluster bool     // cluster-enabled, with a free cluster bus port at port+10000
	bin     string   // "" is redis-server
	conf    string   // a config file, the first argument (redis-sentinel needs one)
	extra   []string // more arguments, after the usual ones
}

// startProcess starts redis-server on a free loopback port, without
// persistence, and waits until it answers PING. A port taken between choosing
// and binding it is retried with another one.
func startProcess(ctx context.Context, opts *processOptions) (*process, error) {
	if opts == nil {
		opts = &processOptions{}
	}
	name := opts.bin
	if name == "" {
		name = "redis-server"
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoBackend, err)
	}
	p := &process{bin: name, dir: opts.dir}
	if p.dir == "" {
		if p.dir, err = os.MkdirTemp("", "redistest-"); err != nil {
			return nil, err
		}
		p.ownDir = true
	}
	for attempt := 1; ; attempt++ {
		if opts.cluster {
			p.port, err = freeClusterPort()
		} else {
			p.port, err = freePort()
		}
		if err != nil {
			return nil, p.cleanup(err)
		}
		p.args = []string{
			"--port", strconv.Itoa(p.port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", p.dir,
		}
		if opts.conf != "" {
			p.args = append([]string{opts.conf}, p.args...)
		}
		if opts.cluster {
			// Redis 6 has no --cluster-port: the bus is always port+10000.
			p.args = append(p.args, "--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(p.dir, "nodes-"+strconv.Itoa(p.port)+".conf"),
				"--cluster-node-timeout", "5000")
		}
		p.args = append(p.args, opts.extra...)
		err = p.run(ctx, bin)
		if err == nil {
			return p, nil
		}
		if attempt < 3 && bytes.Contains(p.log(), []byte("Address already in use")) {
			continue
		}
		return nil, p.cleanup(err)
	}
}

// run starts the process with p.args and waits until it answers PING.
func (p *process) run(ctx context.Context, bin string) error {
	logf, err := os.OpenFile(filepath.Join(p.dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(bin, p.args...)
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: starting %s: %w", p.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()

	exited := func() error {
		select {
		case <-done:
			return errors.New(p.bin + " exited")
		default:
			return nil
		}
	}
	if err := waitPing(ctx, p.addr(), exited); err != nil {
		p.kill()
		return fmt.Errorf("redistest: %s %v: %w\n%s", p.bin, p.args, err, p.log())
	}
	return nil
}

// log returns the end of the server's log, for error messages.
func (p *process) log() []byte {
	b, _ := os.ReadFile(filepath.Join(p.dir, "redis.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return b
}

// cleanup removes a directory made by startProcess and returns err.
func (p *process) cleanup(err error) error {
	if p.ownDir {
		_ = os.RemoveAll(p.dir)
	}
	return err
}

// kill ends the process at once (SIGKILL works on a stopped one too) and
// waits for it.
func (p *process) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

func (p *process) signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Signal(sig)
}

func (p *process) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

func (p *process) pause(context.Context) error { return p.signal(syscall.SIGSTOP) }

func (p *process) unpause(context.Context) error { return p.signal(syscall.SIGCONT) }

// restart kills the process, which loses all data, and starts it again on
// the same port (redis-server binds with SO_REUSEADDR).
func (p *process) restart(ctx context.Context) error {
	p.kill()
	bin, err := exec.LookPath(p.bin)
	if err != nil {
		return err
	}
	return p.run(ctx, bin)
}

func (p *process) terminate(context.Context) error {
	p.kill()
	return p.cleanup(nil)
}

// freeClusterPort returns a free loopback port whose cluster bus port
// (port+10000) is free too.
func freeClusterPort() (int, error) {
	for range 100 {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		if port+10000 > 65535 {
			continue
		}
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000))); err == nil {
			_ = l.Close()
			return port, nil
		}
	}
	return 0, errors.New("redistest: no free port pair for a cluster node")
}
