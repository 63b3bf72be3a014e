package e2e

import "syscall"

// sysProcAttr makes a child die with the test binary, even when the binary
// is killed (e.g. by go test -timeout) before its cleanups run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
