//go:build !linux

package e2e

import "syscall"

// sysProcAttr returns nil: only Linux can tie a child's life to its parent;
// t.Cleanup kills the children elsewhere.
func sysProcAttr() *syscall.SysProcAttr { return nil }
