//go:build !linux

package runas

import (
	"context"
	"fmt"
	"os"
)

// ChildExitCode is the exit status of a child that gave up before starting
// the command.
const ChildExitCode = 125

type sysState struct{}

// Start is not implemented on this operating system yet.
func Start(ctx context.Context, s Spec) (*Process, error) { return nil, ErrUnsupported }

// BeChild is not implemented on this operating system yet.
func BeChild() int {
	fmt.Fprintln(os.Stderr, ErrUnsupported)
	return ChildExitCode
}

// CgroupParent: there are no cgroups here.
func CgroupParent() (string, error) { return "", ErrUnsupported }

// CreateRunDir is not implemented on this operating system yet.
func CreateRunDir(base, name string, uid, gid uint32) (string, error) { return "", ErrUnsupported }

// RemoveRunDir is not implemented on this operating system yet.
func RemoveRunDir(dir string) error { return ErrUnsupported }
