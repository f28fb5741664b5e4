//go:build linux

package runas

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// outputDrain is how long Wait waits for the output pipes to close after
// the tree was killed; only a process that escaped the tree (setsid
// without a cgroup) can hold them open that long. cgroupDrain bounds the
// wait for a killed cgroup to empty.
const (
	outputDrain = 2 * time.Second
	cgroupDrain = 5 * time.Second
)

type sysState struct {
	copiers sync.WaitGroup
	readers []*os.File // parent ends of the output pipes
	outMu   sync.Mutex
	outErr  error
}

// Start starts the command as the user. The context, Spec.Timeout and Kill
// end the whole tree; see Process.Wait. A *ChildError says which step kept
// the command from starting.
//
// WARNING: security-sensitive (root starts a command as a user). Run
// go test ./internal/runas as root after any change.
func Start(ctx context.Context, s Spec) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCancelled, err)
	}
	l, err := plan(s, os.Geteuid(), os.Getegid())
	if err != nil {
		return nil, err
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Go changes directory in the child, where a failure is only an errno:
	// say here what is wrong with the directory when root can see it.
	if st, err := os.Stat(l.Dir); err != nil {
		return nil, &ChildError{Step: StepChdir, Message: err.Error()}
	} else if !st.IsDir() {
		return nil, &ChildError{Step: StepChdir, Message: l.Dir + " is not a directory"}
	}
	path, err := lookPath(l.Path, l.Env, credOf(l))
	if err != nil {
		return nil, &ChildError{Step: StepLookPath, Message: err.Error()}
	}

	p := &Process{
		dropped:     l.Drop,
		log:         log,
		containment: ContainProcessGroup,
		beforeKill:  s.BeforeKill,
		killReq:     make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	var stdout, stderr *os.File
	var childEnds []*os.File
	for _, o := range []struct {
		w   io.Writer
		dst **os.File
	}{{s.Stdout, &stdout}, {s.Stderr, &stderr}} {
		switch w := o.w.(type) {
		case nil:
		case *os.File:
			*o.dst = w
		default:
			r, pw, err := os.Pipe()
			if err != nil {
				closeAll(childEnds)
				closeAll(p.sys.readers)
				p.sys.copiers.Wait()
				return nil, fmt.Errorf("runas: pipe: %w", err)
			}
			*o.dst = pw
			childEnds = append(childEnds, pw)
			p.sys.readers = append(p.sys.readers, r)
			p.sys.copiers.Add(1)
			go p.copyOut(w, r)
		}
	}
	command := func(cgroupFD int) *exec.Cmd {
		cmd := &exec.Cmd{Path: path, Args: l.Args, Env: l.Env, Dir: l.Dir}
		if stdout != nil {
			cmd.Stdout = stdout
		}
		if stderr != nil {
			cmd.Stderr = stderr
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if l.Drop {
			cmd.SysProcAttr.Credential = &syscall.Credential{Uid: l.UID, Gid: l.GID, Groups: l.Groups}
		}
		if cgroupFD >= 0 {
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgroupFD
		}
		return cmd
	}

	// The command enters its cgroup at clone time, so it runs nothing
	// outside it. If that fails (an old kernel, a seccomp filter refusing
	// clone3), it runs in a process group only.
	var cmd *exec.Cmd
	var startErr error
	if !s.NoCgroup {
		cg, err := makeCgroup()
		var fd int
		if err == nil {
			if fd, err = unix.Open(cg, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
				removeCgroup(cg, log)
				err = fmt.Errorf("open cgroup: %w", err)
			}
		}
		if err != nil {
			log.Info("runas_no_cgroup", "reason", err.Error())
		} else {
			cmd = command(fd)
			// A child stopped by a signal between asking to be traced and
			// its exec holds the forking thread in the vfork, so Start
			// would never return: if ctx ends first, killing the cgroup
			// frees it (the start then fails as cancelled).
			stopKill := context.AfterFunc(ctx, func() { killCgroup(cg) })
			p.checkTook, startErr = startAs(cmd, l)
			stopKill()
			unix.Close(fd)
			var refused *ChildError
			switch {
			case cmd.Process != nil:
				p.containment, p.cgroup = ContainCgroup, cg
			case errors.As(startErr, &refused): // refused before the fork
				removeCgroup(cg, log)
			default:
				// The clone into the cgroup, or the exec, failed. Once more
				// without the cgroup: if the exec fails again, that error is
				// the command's.
				removeCgroup(cg, log)
				cgErr := startErr
				cmd = command(-1)
				if p.checkTook, startErr = startAs(cmd, l); startErr == nil {
					log.Info("runas_no_cgroup", "reason", "start in cgroup: "+cgErr.Error())
				}
			}
		}
	}
	if cmd == nil {
		cmd = command(-1)
		p.checkTook, startErr = startAs(cmd, l)
	}
	closeAll(childEnds)
	if cmd.Process == nil {
		closeAll(p.sys.readers)
		p.sys.copiers.Wait()
		return nil, startError(startErr, l)
	}
	p.cmd, p.pid = cmd, cmd.Process.Pid
	if startErr != nil {
		// Started, but killed before its first instruction.
		p.abandon()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ErrCancelled, context.Cause(ctx))
		}
		return nil, startErr
	}

	p.reaper = s.Reaper
	p.reaper.track(p.pid, p.cgroup)
	exited := make(chan struct{})
	go p.watch(ctx, s.Timeout, exited)
	go p.reap(exited)
	return p, nil
}

// abandon cleans up after a command that was started but killed before it
// ran anything: no hook, no tracking, just the kill and the reaping.
func (p *Process) abandon() {
	p.killTree()
	_ = p.cmd.Wait()
	p.mu.Lock()
	p.reaped = true
	p.mu.Unlock()
	closeAll(p.sys.readers)
	p.sys.copiers.Wait()
	removeCgroup(p.cgroup, p.log)
}

// watch kills the tree on cancel, timeout or Kill, until the leader exits.
func (p *Process) watch(ctx context.Context, timeout time.Duration, exited <-chan struct{}) {
	var expire <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-exited:
		return
	case <-ctx.Done():
		p.kill(fmt.Errorf("%w: %w", ErrCancelled, context.Cause(ctx)))
	case <-expire:
		p.kill(fmt.Errorf("%w after %s", ErrTimeout, timeout))
	case <-p.killReq:
		p.kill(ErrKilled)
	}
}

// kill records why (first reason wins) and kills the tree, unless the
// leader already ended by itself.
func (p *Process) kill(reason error) {
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		return
	}
	if p.reason == nil {
		p.reason = reason
	}
	p.mu.Unlock()
	p.callBeforeKill(reason)
	p.killTree()
}

// killTree sends SIGKILL to the cgroup (if any) and to the process group.
// The process group is signalled only while its leader is unreaped, so the
// group id cannot have been reused.
//
// WARNING: security-sensitive (it sends SIGKILL as root). Run
// go test ./internal/runas -run 'TestCancelKillsGrandchild|TestTimeout|TestCgroupCatchesSetsid' as root.
func (p *Process) killTree() {
	if p.cgroup != "" {
		killCgroup(p.cgroup)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
}

// reap waits for the leader without reaping it, kills what is left of the
// tree (a run leaves nothing behind), reaps, drains the output and removes
// the cgroup.
func (p *Process) reap(exited chan<- struct{}) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.mu.Lock()
	p.exited = true
	p.mu.Unlock()
	close(exited)
	p.callBeforeKill(nil)
	p.killTree()
	p.reaper.untrack(p.pid) // before Wait: the pid is still ours (a zombie)
	werr := p.cmd.Wait()
	p.mu.Lock()
	p.reaped = true
	reason := p.reason
	p.mu.Unlock()

	drained := make(chan struct{})
	go func() { p.sys.copiers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(outputDrain):
		p.log.Warn("runas_output_held_open", "pid", p.pid)
		closeAll(p.sys.readers)
		<-drained
	}
	closeAll(p.sys.readers)
	if p.cgroup != "" {
		removeCgroup(p.cgroup, p.log)
	}

	p.code = exitCode(p.cmd.ProcessState)
	var ee *exec.ExitError
	switch {
	case reason != nil:
		p.err = reason
	case werr != nil && !errors.As(werr, &ee):
		p.err = fmt.Errorf("runas: wait: %w", werr)
	default:
		p.sys.outMu.Lock()
		p.err = p.sys.outErr
		p.sys.outMu.Unlock()
	}
	close(p.done)
}

func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// copyOut copies r to w through a fixed buffer. After w fails it keeps
// reading into nowhere, so the command never blocks on a full pipe.
func (p *Process) copyOut(w io.Writer, r *os.File) {
	defer p.sys.copiers.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 && w != nil {
			if _, werr := w.Write(buf[:n]); werr != nil {
				p.sys.outMu.Lock()
				if p.sys.outErr == nil {
					p.sys.outErr = fmt.Errorf("runas: write output: %w", werr)
				}
				p.sys.outMu.Unlock()
				w = nil
			}
		}
		if err != nil {
			return
		}
	}
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// cgroupRoot is where a cgroup v2 hierarchy is mounted: /sys/fs/cgroup on
// a unified system, /sys/fs/cgroup/unified on a hybrid one (which has no
// controllers there, but cgroup.kill and the tree work the same).
func cgroupRoot() (string, error) {
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy at /sys/fs/cgroup")
}

// ownCgroup is this process's cgroup v2 path ("0::/a/b" in /proc/self/cgroup).
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest, nil
		}
	}
	return "", errors.New("no cgroup v2 entry in /proc/self/cgroup")
}

// CgroupParent is the directory under which runs get their cgroups
// (deskrun-runs below the agent's own cgroup), or an error saying why
// there is none. Start uses the same test; exported for doctor output.
func CgroupParent() (string, error) {
	root, err := cgroupRoot()
	if err != nil {
		return "", err
	}
	own, err := ownCgroup()
	if err != nil {
		return "", err
	}
	if strings.HasSuffix(own, "/deskrun-runs") || strings.Contains(own, "/deskrun-runs/") {
		return "", errors.New("already inside a run's cgroup")
	}
	dir := filepath.Join(root, own, "deskrun-runs")
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("cgroup v2 at %s not writable: %w", root, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		return "", fmt.Errorf("no cgroup.kill (kernel older than 5.14?): %w", err)
	}
	return dir, nil
}

func makeCgroup() (string, error) {
	parent, err := CgroupParent()
	if err != nil {
		return "", err
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	dir := filepath.Join(parent, "run-"+hex.EncodeToString(b[:]))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("make cgroup: %w", err)
	}
	return dir, nil
}

func killCgroup(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
}

// removeCgroup waits for a killed cgroup to empty and removes it.
func removeCgroup(dir string, log *slog.Logger) {
	if dir == "" {
		return
	}
	deadline := time.Now().Add(cgroupDrain)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			log.Warn("runas_cgroup_not_removed", "cgroup", dir, "error", err.Error())
			return
		}
		if ev, _ := os.ReadFile(filepath.Join(dir, "cgroup.events")); bytes.Contains(ev, []byte("populated 1")) {
			killCgroup(dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CreateRunDir makes base/name, a fresh directory owned by the user with
// mode 0700, for one run. base must already exist, be a real directory and,
// when the agent is root, belong to root and be writable by no one else
// (else a user could swap the new directory for a link); the user must be
// able to search it (e.g. 0711) to reach the run directory.
//
// WARNING: security-sensitive (root creates and chowns a path). Run
// go test ./internal/runas -run TestRunDir as root.
func CreateRunDir(base, name string, uid, gid uint32) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("runas: bad run directory name %q", name)
	}
	var st unix.Stat_t
	if err := unix.Lstat(base, &st); err != nil {
		return "", fmt.Errorf("runas: run directory base: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "", fmt.Errorf("runas: run directory base %s is not a directory", base)
	}
	if os.Geteuid() == 0 && (st.Uid != 0 || st.Mode&0o022 != 0) {
		return "", fmt.Errorf("runas: run directory base %s must belong to root and be writable only by it (owner %d, mode %o)", base, st.Uid, st.Mode&0o7777)
	}
	dir := filepath.Join(base, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("runas: make run directory: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		if os.Geteuid() == 0 {
			err = unix.Fchown(fd, int(uid), int(gid))
		}
		if err == nil {
			err = unix.Fchmod(fd, 0o700)
		}
		unix.Close(fd)
	}
	if err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("runas: own run directory: %w", err)
	}
	return dir, nil
}

// RemoveRunDir removes a run directory and everything the run left in it.
// os.RemoveAll does not follow symbolic links inside the tree, so a link
// the user planted is removed, not its target.
//
// WARNING: security-sensitive (root deletes a tree the user controlled).
// Run go test ./internal/runas -run TestRunDir as root.
func RemoveRunDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("runas: remove run directory: %w", err)
	}
	return nil
}
