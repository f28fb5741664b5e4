//go:build !linux

package runas

// Reaper is not implemented on this operating system yet.
type Reaper struct{}

// StartReaper is not implemented on this operating system yet.
func StartReaper(string) (*Reaper, error) { return nil, ErrUnsupported }

func (r *Reaper) track(int, string) {}
func (r *Reaper) untrack(int)       {}

// Close does nothing here.
func (r *Reaper) Close() {}

// BeReaper is not implemented on this operating system yet.
func BeReaper() int { return 2 }
