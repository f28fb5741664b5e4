//go:build !linux

package runas

import "context"

type sysState struct{}

// Start is not implemented on this operating system yet.
func Start(ctx context.Context, s Spec) (*Process, error) { return nil, ErrUnsupported }

// CgroupParent: there are no cgroups here.
func CgroupParent() (string, error) { return "", ErrUnsupported }

// CreateRunDir is not implemented on this operating system yet.
func CreateRunDir(base, name string, uid, gid uint32) (string, error) { return "", ErrUnsupported }

// RemoveRunDir is not implemented on this operating system yet.
func RemoveRunDir(dir string) error { return ErrUnsupported }
