// Package multiproc re-executes the running test binary as child processes,
// so a test can check a property across several processes that share one
// Redis, and kill some of them.
//
// The parent calls Start with the name of an entry-point test; that test
// calls Role and, when it is empty (the normal run), skips:
//
//	func TestChild(t *testing.T) {
//		switch multiproc.Role() {
//		case "":
//			t.Skip("entry point of child processes")
//		case "holder":
//			... // read multiproc.Env, write results to stdout
//		}
//	}
package multiproc

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

const roleVar = "SLUICETEST_CHILD"

// Role returns the role this process was started with by Start, or "" when it
// is not a child.
func Role() string { return os.Getenv(roleVar) }

// Env returns the value of a variable passed to Start, failing the test when
// it is missing.
func Env(t testing.TB, name string) string {
	t.Helper()
	v, ok := os.LookupEnv(name)
	if !ok {
		t.Fatalf("multiproc: child needs %s", name)
	}
	return v
}

// Child is a running child process. Its standard output arrives line by line
// on Lines, which is closed when the output ends.
type Child struct {
	cmd   *exec.Cmd
	Lines <-chan string
	done  chan struct{}
	err   error
	mu    sync.Mutex
	errb  strings.Builder
}

// Start runs the test binary as a child executing only the test named entry,
// with role and extra environment variables ("NAME=value"). The child is
// killed at the end of the test if still running.
func Start(t testing.TB, entry, role string, env ...string) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+entry+"$", "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), roleVar+"="+role), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &Child{cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{c: c}
	if err := cmd.Start(); err != nil {
		t.Fatalf("multiproc: start child: %v", err)
	}
	lines := make(chan string, 1024)
	c.Lines = lines
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.Kill()
		<-c.done
	})
	return c
}

type lockedWriter struct{ c *Child }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.errb.Len() < 64*1024 {
		w.c.errb.Write(p)
	}
	return len(p), nil
}

// Kill sends SIGKILL to the child.
func (c *Child) Kill() { _ = c.cmd.Process.Kill() }

// Signal sends sig to the child.
func (c *Child) Signal(sig os.Signal) error { return c.cmd.Process.Signal(sig) }

// Wait waits for the child to exit (after its output ended) and returns an
// error that includes its standard error when it failed.
func (c *Child) Wait() error {
	<-c.done
	if c.err != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		return fmt.Errorf("child %v: %w\n%s", c.cmd.Args, c.err, c.errb.String())
	}
	return nil
}

// Expect reads lines until one starts with prefix and returns it, or fails
// the test when the output ends first.
func (c *Child) Expect(t testing.TB, prefix string) string {
	t.Helper()
	for line := range c.Lines {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	t.Fatalf("multiproc: child ended before printing %q: %v", prefix, c.Wait())
	return ""
}

// PrintInts writes a line "prefix n1 n2 ..." to standard output, for the
// parent to read with ExpectInts.
func PrintInts(prefix string, ns []int64) {
	var b strings.Builder
	b.WriteString(prefix)
	for _, n := range ns {
		b.WriteByte(' ')
		b.WriteString(strconv.FormatInt(n, 10))
	}
	fmt.Println(b.String())
}

// ExpectInts reads the child's line written by PrintInts with prefix, waits
// for the child to exit successfully, and returns the numbers.
func (c *Child) ExpectInts(t testing.TB, prefix string) []int64 {
	t.Helper()
	fields := strings.Fields(strings.TrimPrefix(c.Expect(t, prefix+" "), prefix))
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	out := make([]int64, len(fields))
	for i, f := range fields {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("multiproc: %q: %v", prefix, err)
		}
		out[i] = n
	}
	return out
}
