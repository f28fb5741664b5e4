//go:build linux

package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// procInfo is what the session rules read of a process in /proc.
type procInfo struct {
	pid, ppid, sid int
	uid            uint32 // real uid
	comm, state    string
}

func readProc(pid int) (procInfo, bool) {
	pi := procInfo{pid: pid}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return pi, false
	}
	// pid (comm) state ppid pgrp session …; comm may hold spaces and ')'.
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return pi, false
	}
	pi.comm = string(b[open+1 : end])
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 4 {
		return pi, false
	}
	pi.state = f[0]
	pi.ppid, _ = strconv.Atoi(f[1])
	pi.sid, _ = strconv.Atoi(f[3])
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return pi, false
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			fs := strings.Fields(v)
			if len(fs) == 0 {
				return pi, false
			}
			n, err := strconv.ParseUint(fs[0], 10, 32)
			if err != nil {
				return pi, false
			}
			pi.uid = uint32(n)
			return pi, true
		}
	}
	return pi, false
}

func allPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// ours reports whether a process belongs to this agent's runs: it is in
// the agent's own session (runs and their Xvfb are process groups of the
// agent's session), in a run's cgroup (a flow that called setsid), or a
// descendant of the agent.
func ours(pi procInfo, self, selfSID int) bool {
	if pi.sid == selfSID {
		return true
	}
	if cg, err := os.ReadFile("/proc/" + strconv.Itoa(pi.pid) + "/cgroup"); err == nil && bytes.Contains(cg, []byte("/deskrun-runs/")) {
		return true
	}
	ppid := pi.ppid
	for range 64 {
		if ppid == self {
			return true
		}
		if ppid <= 1 {
			return false
		}
		pp, ok := readProc(ppid)
		if !ok {
			return false
		}
		ppid = pp.ppid
	}
	return false
}

// foreignSessionProcesses lists the processes that make uid "have a
// session" for unattended-sessions: exclusive: every process whose real
// uid is the user's and that is not part of this agent's runs (see ours).
// Every way of being signed in — console, SSH, a graphical desktop, su,
// a cron job — has at least one such process for as long as it lasts,
// which utmp does not promise (it lists only terminal logins, and stale
// entries survive crashes).
func foreignSessionProcesses(uid uint32) []int {
	self := os.Getpid()
	selfSID, _ := unix.Getsid(0)
	var out []int
	for _, pid := range allPIDs() {
		pi, ok := readProc(pid)
		if !ok || pi.uid != uid || pid == self || pi.state == "Z" || pi.state == "X" {
			continue // a zombie is no session (some containers' init never reaps)
		}
		if !ours(pi, self, selfSID) {
			out = append(out, pid)
		}
	}
	return out
}

// xServers are the names of X server processes.
var xServers = map[string]bool{"Xorg": true, "X": true, "Xvfb": true, "Xwayland": true, "Xvnc": true, "Xtigervnc": true, "Xephyr": true}

// findUserDisplay finds the X session of an attended run's user: an X
// server the user owns (its display number and -auth file from its
// command line), else DISPLAY and XAUTHORITY from the environment of one
// of the user's processes whose display has a socket (a server run by a
// display manager as root). Processes of this agent's own runs (their
// Xvfb) never count.
func findUserDisplay(uid uint32) ([]string, bool) {
	self := os.Getpid()
	selfSID, _ := unix.Getsid(0)
	var users []procInfo
	for _, pid := range allPIDs() {
		pi, ok := readProc(pid)
		if !ok || pi.uid != uid || pi.state == "Z" || pi.state == "X" || ours(pi, self, selfSID) {
			continue
		}
		users = append(users, pi)
		if !xServers[pi.comm] {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			continue
		}
		display, auth := "", ""
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		for i, a := range args {
			if i > 0 && len(a) > 1 && a[0] == ':' && isDigits(a[1:]) && display == "" {
				display = a
			}
			if a == "-auth" && i+1 < len(args) {
				auth = args[i+1]
			}
		}
		if display == "" {
			continue
		}
		if auth == "" {
			auth = envOfUser(users, display)
		}
		env := []string{"DISPLAY=" + display}
		if auth != "" {
			env = append(env, "XAUTHORITY="+auth)
		}
		return env, true
	}
	for _, pi := range users {
		e := environ(pi.pid)
		d := e["DISPLAY"]
		if !strings.HasPrefix(d, ":") {
			continue
		}
		n, _, _ := strings.Cut(d[1:], ".")
		if !isDigits(n) {
			continue
		}
		if _, err := os.Stat(filepath.Join("/tmp/.X11-unix", "X"+n)); err != nil {
			continue
		}
		env := []string{"DISPLAY=" + d}
		if x := e["XAUTHORITY"]; x != "" {
			env = append(env, "XAUTHORITY="+x)
		}
		return env, true
	}
	return nil, false
}

func envOfUser(users []procInfo, display string) string {
	for _, pi := range users {
		e := environ(pi.pid)
		if e["DISPLAY"] == display && e["XAUTHORITY"] != "" {
			return e["XAUTHORITY"]
		}
	}
	return ""
}

func environ(pid int) map[string]string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok && (k == "DISPLAY" || k == "XAUTHORITY") {
			m[k] = v
		}
	}
	return m
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// exitedZero reports whether pid has exited with status 0. It reads the
// exit code the kernel keeps for a zombie (/proc/PID/stat field 52), so it
// does not reap: runas reaps the leader after BeforeKill.
func exitedZero(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return false
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state): field 52 is f[49].
	return len(f) > 49 && f[0] == "Z" && f[49] == "0"
}

// copyPackage copies the package directory src into dir/name, every file
// and directory owned by the user. It works relative to directory file
// descriptors and creates with O_EXCL|O_NOFOLLOW, so nothing the user
// could plant in its run directory makes root write elsewhere.
func copyPackage(src, dir, name string, uid, gid uint32) error {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return copyDirAt(src, dfd, name, 0o755, uid, gid, 0)
}

func copyDirAt(src string, parent int, name string, mode os.FileMode, uid, gid uint32, depth int) error {
	if depth > 64 {
		return errors.New("package nested too deep")
	}
	if err := unix.Mkdirat(parent, name, 0o700); err != nil {
		return fmt.Errorf("mkdir %s: %w", name, err)
	}
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(src, e.Name())
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			err = copyDirAt(p, fd, e.Name(), info.Mode(), uid, gid, depth+1)
		case info.Mode().IsRegular():
			err = copyFileAt(p, fd, e.Name(), info.Mode(), uid, gid)
		case info.Mode()&os.ModeSymlink != 0:
			var target string
			if target, err = os.Readlink(p); err == nil {
				if err = unix.Symlinkat(target, fd, e.Name()); err == nil {
					err = unix.Fchownat(fd, e.Name(), int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW)
				}
			}
		}
		if err != nil {
			return err
		}
	}
	if os.Geteuid() == 0 {
		if err := unix.Fchown(fd, int(uid), int(gid)); err != nil {
			return err
		}
	}
	return unix.Fchmod(fd, uint32(mode.Perm()&0o755|0o700))
}

func copyFileAt(src string, dirfd int, name string, mode os.FileMode, uid, gid uint32) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	out := os.NewFile(uintptr(fd), name)
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := out.Chown(int(uid), int(gid)); err != nil {
			return err
		}
	}
	return out.Chmod(mode.Perm()&0o755 | 0o600)
}

// writeUserFile creates dir/name (it must not exist) with data, owned by
// the user, 0600.
func writeUserFile(dir, name string, data []byte, uid, gid uint32) error {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		return f.Chown(int(uid), int(gid))
	}
	return nil
}

// readUserFile reads a file the user wrote, as root, without being
// tricked into reading something else: not through a symbolic link (the
// last component; its directory is the run's, whose parent is root's),
// only a regular file, only one the user owns (a hard link to a root file
// is not), at most limit bytes.
func readUserFile(path string, uid uint32, limit int64) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, errors.New("it is a symbolic link")
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, errors.New("it is not a regular file")
	}
	if os.Geteuid() == 0 && st.Uid != uid {
		return nil, fmt.Errorf("it belongs to uid %d, not to the run's user", st.Uid)
	}
	if st.Size > limit {
		return nil, fmt.Errorf("it is larger than %d bytes", limit)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}
