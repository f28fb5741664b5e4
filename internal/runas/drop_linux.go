//go:build linux

package runas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Securebits that would let a process keep capabilities across setuid
// (linux/securebits.h; golang.org/x/sys does not name them).
const (
	secbitNoSetuidFixup = 1 << 2
	secbitKeepCaps      = 1 << 4
)

// cldTrapped is the si_code of a ptrace stop in a SIGCHLD siginfo.
const cldTrapped = 4

// startAs starts cmd, which already carries the user's credentials in its
// SysProcAttr. When l.Drop is set the command is traced until its exec:
// it stops before its first instruction, its credentials are checked and
// only then is it let go. A *ChildError says the check failed; the
// command was then killed, and the caller must still reap it
// (cmd.Process is set). checkTook is how long the stop and the check took.
//
// Ptrace requests must come from the thread that is the tracer, the one
// that forked: the goroutine stays on its thread from the fork to the
// detach.
//
// WARNING: security-sensitive (this is where root is given up). Run
// go test ./internal/runas -run 'TestRunAsUser|TestAllowRoot|TestVerify|TestRefuse' as root.
func startAs(cmd *exec.Cmd, l launch) (checkTook time.Duration, err error) {
	if !l.Drop {
		return 0, cmd.Start()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// Credentials, securebits included, belong to a thread: check those of
	// the thread that forks.
	if err := checkNoKeptCaps(); err != nil {
		return 0, err
	}
	cmd.SysProcAttr.Ptrace = true
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	t0 := time.Now()
	pid := cmd.Process.Pid
	if err := awaitExecStop(pid); err != nil {
		// Nothing of it ran; its exit is left for Wait.
		_ = unix.Kill(pid, unix.SIGKILL)
		return time.Since(t0), &ChildError{Step: StepExec, Message: err.Error()}
	}
	if err := verifyCredentials(pid, l); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return time.Since(t0), err
	}
	// Signal 0: the exec's SIGTRAP is not delivered.
	if err := unix.PtraceDetach(pid); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return time.Since(t0), &ChildError{Step: StepVerify, Message: "release the command after the check: " + err.Error()}
	}
	return time.Since(t0), nil
}

// awaitExecStop waits until the traced pid stops with the SIGTRAP that a
// successful exec raises. The stops of a traced process can only be seen
// after the exec (until then this thread is held in the vfork), so any
// other signal came after it: it is passed on, and the SIGTRAP, still
// pending, stops the process before it returns to user space. The waits
// use WNOWAIT so that an exit is not consumed: it stays for Wait. An error
// means the process has exited, or cannot be traced.
func awaitExecStop(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WSTOPPED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if info.Code != cldTrapped {
			return fmt.Errorf("process %d ended before its first instruction", pid)
		}
		sig := childStatus(&info)
		if sig == int32(unix.SIGTRAP) {
			return nil
		}
		if err := unix.PtraceCont(pid, int(sig)); err != nil {
			return err
		}
	}
}

// childStatus is si_status of a SIGCHLD siginfo: the stop signal of a
// ptrace stop. It follows si_pid and si_uid in the union, which starts at
// byte 16 on 64-bit systems and 12 on 32-bit ones.
func childStatus(info *unix.Siginfo) int32 {
	off := 12 + 8
	if unsafe.Sizeof(uintptr(0)) == 8 {
		off = 16 + 8
	}
	b := (*[unsafe.Sizeof(*info)]byte)(unsafe.Pointer(info))
	return int32(binary.NativeEndian.Uint32(b[off:]))
}

// checkNoKeptCaps refuses to fork from a thread whose securebits would let
// the child keep capabilities through setuid (SECBIT_KEEP_CAPS,
// SECBIT_NO_SETUID_FIXUP: then setuid clears neither the permitted nor the
// ambient set), or that has ambient capabilities. The check of the started
// command would catch what survives the exec; this says why, before
// anything runs.
//
// WARNING: security-sensitive. Run go test ./internal/runas -run TestRefuseKeptCapabilities as root.
func checkNoKeptCaps() error {
	bits, err := unix.PrctlRetInt(unix.PR_GET_SECUREBITS, 0, 0, 0, 0)
	if err != nil {
		return &ChildError{Step: StepRegainRoot, Message: "read the agent's securebits: " + err.Error()}
	}
	if bits&(secbitKeepCaps|secbitNoSetuidFixup) != 0 {
		return &ChildError{Step: StepRegainRoot, Message: fmt.Sprintf("the agent's securebits are %#x (KEEP_CAPS or NO_SETUID_FIXUP): setuid would keep capabilities", bits)}
	}
	// An ambient capability must also be permitted and inheritable: no
	// inheritable capability, no ambient one (the common case, one call).
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return &ChildError{Step: StepRegainRoot, Message: "read the agent's capabilities: " + err.Error()}
	}
	if data[0].Inheritable|data[1].Inheritable == 0 {
		return nil
	}
	for c := 0; c < 64; c++ {
		set, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, uintptr(c), 0, 0)
		if err != nil {
			break // EINVAL: past the last capability
		}
		if set == 1 {
			return &ChildError{Step: StepRegainRoot, Message: fmt.Sprintf("the agent has ambient capability %d: the command would keep it", c)}
		}
	}
	return nil
}

// verifyCredentials reads the credentials of pid from /proc and checks
// they are exactly l's: real, effective, saved and filesystem uid and
// gid, the supplementary groups, and (unless l is root) no permitted,
// effective or ambient capability. Inheritable capabilities grant nothing
// without ambient or file capabilities, and setuid does not clear them,
// so they are not checked.
//
// WARNING: security-sensitive. Run go test ./internal/runas -run 'TestVerify|TestRunAsUser' as root.
func verifyCredentials(pid int, l launch) error {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return &ChildError{Step: StepVerify, Message: "read the command's credentials: " + err.Error()}
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	want := slices.Sorted(slices.Values(l.Groups))
	var groups []uint32
	for _, f := range strings.Fields(fields["Groups"]) {
		g, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return &ChildError{Step: StepVerify, Message: fmt.Sprintf("groups %q", fields["Groups"])}
		}
		groups = append(groups, uint32(g))
	}
	slices.Sort(groups)

	var wrong []string
	root := false
	for _, id := range []struct {
		name string
		want uint32
	}{{"Uid", l.UID}, {"Gid", l.GID}} {
		ids := strings.Fields(fields[id.name])
		ok := len(ids) == 4
		for _, s := range ids {
			ok = ok && s == strconv.FormatUint(uint64(id.want), 10)
			root = root || (s == "0" && id.want != 0)
		}
		if !ok {
			wrong = append(wrong, fmt.Sprintf("%s %v, want %d", strings.ToLower(id.name)+"s", ids, id.want))
		}
	}
	if !slices.Equal(groups, want) {
		wrong = append(wrong, fmt.Sprintf("groups %v, want %v", groups, want))
		root = root || (slices.Contains(groups, 0) && !slices.Contains(want, 0))
	}
	if l.UID != 0 {
		for _, c := range []string{"CapPrm", "CapEff", "CapAmb"} {
			if v, ok := fields[c]; !ok || strings.Trim(v, "0") != "" {
				wrong = append(wrong, fmt.Sprintf("%s %q, want none", c, v))
				root = true
			}
		}
	}
	switch {
	case len(wrong) == 0:
		return nil
	case root:
		return &ChildError{Step: StepRegainRoot, Message: strings.Join(wrong, "; ")}
	default:
		return &ChildError{Step: StepVerify, Message: strings.Join(wrong, "; ")}
	}
}

// cred is who a command runs as, for the permission checks done before it
// starts.
type cred struct {
	uid, gid uint32
	groups   []uint32
}

// credOf is l's user, or the agent itself when it does not drop.
func credOf(l launch) cred {
	if l.Drop {
		return cred{uid: l.UID, gid: l.GID, groups: l.Groups}
	}
	c := cred{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}
	gs, _ := unix.Getgroups()
	c.groups = make([]uint32, 0, len(gs))
	for _, g := range gs {
		c.groups = append(c.groups, uint32(g))
	}
	return c
}

// may reports whether c has the permission bit (1 execute or search, 2
// write, 4 read) on st, by the mode bits: the owner's if c owns it, else
// the group's if c is in its group, else the others'. Root (the agent's
// own runs as root, with AllowRoot) may search any directory and execute
// any file with an execute bit. Access control lists are not read.
func (c cred) may(st *unix.Stat_t, bit uint32) bool {
	switch {
	case c.uid == 0:
		return st.Mode&unix.S_IFMT == unix.S_IFDIR || st.Mode&0o111 != 0
	case st.Uid == c.uid:
		return st.Mode&(bit<<6) != 0
	case st.Gid == c.gid || slices.Contains(c.groups, st.Gid):
		return st.Mode&(bit<<3) != 0
	default:
		return st.Mode&bit != 0
	}
}

// canSearch reports whether c may reach dir and search it: every directory
// on the way, as written and with its links resolved.
func (c cred) canSearch(dir string) bool {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false
	}
	for _, path := range []string{dir, real} {
		for p := filepath.Clean(path); ; p = filepath.Dir(p) {
			var st unix.Stat_t
			if unix.Stat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR || !c.may(&st, 1) {
				return false
			}
			if p == "/" {
				break
			}
		}
	}
	return true
}

// canExec reports whether c may execute path: a regular file with c's
// execute bit, in directories c may search (that of the link and that of
// the file, when path is a link).
func (c cred) canExec(path string) bool {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return false
	}
	var st unix.Stat_t
	if unix.Stat(real, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || !c.may(&st, 1) {
		return false
	}
	return c.canSearch(filepath.Dir(path)) && c.canSearch(filepath.Dir(real))
}

// lookPath resolves a command without a slash in the PATH of env, as c: the
// first regular file c may execute. Relative and empty PATH entries (the
// working directory) are skipped, as exec.LookPath refuses them.
//
// WARNING: security-sensitive (root picks what the user runs). Run
// go test ./internal/runas -run TestLookPathAsUser as root.
func lookPath(file string, env []string, c cred) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		if p := filepath.Join(dir, file); c.canExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: no file the user may execute in PATH %q", file, path)
}

// startError turns the error of a fork/exec into a ChildError. The child
// reports only an errno; a permission or existence error is the chdir's
// when the user cannot reach the directory (Go changes directory after
// the credentials, before the exec), else the exec's.
func startError(err error, l launch) error {
	var ce *ChildError
	if errors.As(err, &ce) {
		return ce
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case unix.EACCES, unix.ENOENT, unix.ENOTDIR, unix.ELOOP:
			if !credOf(l).canSearch(l.Dir) {
				return &ChildError{Step: StepChdir, Message: fmt.Sprintf("%s: %v", l.Dir, errno)}
			}
		}
	}
	return &ChildError{Step: StepExec, Message: err.Error()}
}
