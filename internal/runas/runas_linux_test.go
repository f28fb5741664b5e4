//go:build linux

package runas

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/deskrun/deskrun/internal/identity"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("runas tests need root, and CI runs as root")
		}
		t.Skip("needs root to create users and drop to them: run as root or via .ci/run")
	}
}

type testUser struct {
	identity.Identity
	SuppGID uint32 // a supplementary group made for the test
	Base    string // 0711, root-owned: holds the home and run directories
}

// newUser creates a real local user with its own primary group and one
// extra supplementary group, removed when the test ends.
func newUser(t testing.TB) testUser {
	t.Helper()
	requireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	name, group := "drra"+suffix, "drrg"+suffix
	base, err := os.MkdirTemp("", "deskrun-runas-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(base, 0o711))
	t.Cleanup(func() { os.RemoveAll(base) })
	home := filepath.Join(base, "home")

	shadow(t, "groupadd", group)
	t.Cleanup(func() { _ = exec.Command("groupdel", group).Run() })
	shadow(t, "useradd", "-m", "-d", home, "-s", "/bin/sh", "-U", "-G", group, name)
	t.Cleanup(func() { _ = exec.Command("userdel", "-f", name).Run() })

	u, err := user.Lookup(name)
	require.NoError(t, err)
	uid := atou(t, u.Uid)
	t.Cleanup(func() {
		// Every run of this user has ended: nothing may be left running.
		for _, pid := range liveProcesses(uid) {
			t.Errorf("process %d of the test user outlived its run", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	g, err := user.LookupGroup(group)
	require.NoError(t, err)
	gids, err := u.GroupIds()
	require.NoError(t, err)
	id := identity.Identity{Username: name, UID: atou(t, u.Uid), GID: atou(t, u.Gid), Home: u.HomeDir, Shell: "/bin/sh"}
	groups := make([]uint32, 0, len(gids))
	for _, s := range gids {
		groups = append(groups, atou(t, s))
	}
	id.Groups = groups
	return testUser{Identity: id, SuppGID: atou(t, g.Gid), Base: base}
}

// shadow runs useradd and friends, which fail at once when another test
// (here or in another package) holds the passwd lock.
func shadow(t testing.TB, args ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err == nil {
			return
		}
		if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func atou(t testing.TB, s string) uint32 {
	n, err := strconv.ParseUint(s, 10, 32)
	require.NoError(t, err)
	return uint32(n)
}

func runDir(t *testing.T, u testUser) string {
	t.Helper()
	dir, err := CreateRunDir(u.Base, "run-"+strings.ReplaceAll(t.Name(), "/", "_"), u.UID, u.GID)
	require.NoError(t, err)
	t.Cleanup(func() { _ = RemoveRunDir(dir) })
	return dir
}

// run starts spec and returns its output, exit code and error.
func run(t *testing.T, ctx context.Context, s Spec) (stdout, stderr string, code int, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	s.Stdout, s.Stderr = &out, &errOut
	p, err := Start(ctx, s)
	if err != nil {
		return "", "", -1, err
	}
	code, err = p.Wait()
	return out.String(), errOut.String(), code, err
}

// statusOf parses the Uid, Gid, Groups and Cap* lines of a
// /proc/PID/status.
func statusOf(t *testing.T, status string) map[string][]string {
	t.Helper()
	fields := map[string][]string{}
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "Uid" || k == "Gid" || k == "Groups" || strings.HasPrefix(k, "Cap")) {
			fields[k] = strings.Fields(v)
		}
	}
	require.Contains(t, fields, "Uid", status)
	return fields
}

func TestRunAsUser(t *testing.T) {
	u := newUser(t)
	t.Setenv("DESKRUN_CANARY", "must-not-leak")
	dir := runDir(t, u)

	// The command reports its own credentials (those of the shell itself,
	// $$), tries to become root again, then prints its directory and
	// environment.
	script := `cat /proc/$$/status; echo ---
perl -MPOSIX -e 'print "setuid 0\n" if POSIX::setuid(0); print "setgid 0\n" if POSIX::setgid(0); $> = 0; $) = "0 0"; print "uid $< euid $> egid ", (split / /, $))[0], "\n"'; echo ---
pwd; echo ---; env`
	var out, errOut bytes.Buffer
	p, err := Start(context.Background(), Spec{
		Identity: u.Identity, Dir: dir,
		Path: "sh", Args: []string{"-c", script},
		Env:    []string{"DESKRUN_INPUT_GREETING=hello world"},
		Stdout: &out, Stderr: &errOut,
	})
	require.NoError(t, err)
	require.True(t, p.Dropped())
	t.Logf("containment: %s %s", p.Containment(), p.Cgroup())
	code, err := p.Wait()
	require.NoError(t, err)
	require.Equal(t, 0, code, "stderr: %s", errOut.String())

	parts := strings.Split(out.String(), "---\n")
	require.Len(t, parts, 4, out.String())
	st := statusOf(t, parts[0])
	uid, gid := strconv.Itoa(int(u.UID)), strconv.Itoa(int(u.GID))
	require.Equal(t, []string{uid, uid, uid, uid}, st["Uid"], "real, effective, saved and filesystem uid")
	require.Equal(t, []string{gid, gid, gid, gid}, st["Gid"], "real, effective, saved and filesystem gid")
	var groups []uint32
	for _, f := range st["Groups"] {
		groups = append(groups, atou(t, f))
	}
	require.NotContains(t, groups, uint32(0), "gid 0 leaked into the groups (the nomad bug)")
	require.Contains(t, groups, u.GID)
	require.Contains(t, groups, u.SuppGID, "the user's supplementary group is set")
	require.ElementsMatch(t, slices.Compact(slices.Sorted(slices.Values(u.Groups))), groups, "exactly the user's groups")
	for _, c := range []string{"CapPrm", "CapEff", "CapAmb"} {
		require.Equal(t, []string{"0000000000000000"}, st[c], c)
	}
	require.Equal(t, fmt.Sprintf("uid %s euid %s egid %s\n", uid, uid, gid), parts[1], "setuid, setgid, seteuid and setegid to 0 all fail")
	require.Equal(t, dir+"\n", parts[2], "pwd")

	lines := strings.Split(strings.TrimSpace(parts[3]), "\n")
	env := map[string]string{}
	for _, kv := range lines {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	require.Equal(t, u.Home, env["HOME"])
	require.Equal(t, u.Username, env["USER"])
	require.Equal(t, u.Username, env["LOGNAME"])
	require.Equal(t, "/bin/sh", env["SHELL"])
	require.Equal(t, DefaultPath, env["PATH"])
	require.Equal(t, dir, env["PWD"])
	require.Equal(t, "hello world", env["DESKRUN_INPUT_GREETING"])
	require.NotContains(t, env, "DESKRUN_CANARY", "the agent's environment leaked")
	for k := range env {
		switch k {
		case "HOME", "USER", "LOGNAME", "SHELL", "PATH", "DESKRUN_INPUT_GREETING", "PWD", "OLDPWD", "SHLVL", "_":
		default:
			t.Errorf("unexpected variable %s in the clean environment", k)
		}
	}
}

func TestAllowRoot(t *testing.T) {
	requireRoot(t)
	root := identity.Identity{Username: "root", Home: "/root", Shell: "/bin/sh"}
	_, err := Start(context.Background(), Spec{Identity: root, Path: "id"})
	require.ErrorIs(t, err, ErrRunAsRoot)

	out, _, code, err := run(t, context.Background(), Spec{Identity: root, Path: "id", Args: []string{"-u"}, AllowRoot: true})
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.Equal(t, "0\n", out)
}

// startIdle starts sleep directly (not through runas), with cred if set,
// and kills it when the test ends.
func startIdle(t *testing.T, cred *syscall.Credential) int {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// TestVerifyCredentials: the check that lets a started command go refuses
// one that does not have exactly the user's credentials.
func TestVerifyCredentials(t *testing.T) {
	u := newUser(t)
	l, err := plan(Spec{Identity: u.Identity, Path: "sleep"}, 0, 0)
	require.NoError(t, err)

	t.Run("the user's", func(t *testing.T) {
		pid := startIdle(t, &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: l.Groups})
		require.NoError(t, verifyCredentials(pid, l))
	})
	t.Run("root", func(t *testing.T) {
		pid := startIdle(t, nil) // the test's own child: root, with every capability
		err := verifyCredentials(pid, l)
		require.ErrorIs(t, err, ErrRegainedRoot)
		var ce *ChildError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, StepRegainRoot, ce.Step)
		require.Contains(t, ce.Message, "CapEff")
	})
	t.Run("gid 0 among the groups", func(t *testing.T) {
		pid := startIdle(t, &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: append(slices.Clone(l.Groups), 0)})
		err := verifyCredentials(pid, l)
		var ce *ChildError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, StepRegainRoot, ce.Step, "%v", err)
	})
	t.Run("a group missing", func(t *testing.T) {
		pid := startIdle(t, &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: []uint32{u.GID}})
		err := verifyCredentials(pid, l)
		require.ErrorIs(t, err, ErrRegainedRoot)
		var ce *ChildError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, StepVerify, ce.Step, "%v", err)
		require.Contains(t, ce.Message, "groups")
	})
	t.Run("another user", func(t *testing.T) {
		pid := startIdle(t, &syscall.Credential{Uid: u.UID + 1, Gid: u.GID, Groups: l.Groups})
		err := verifyCredentials(pid, l)
		var ce *ChildError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, StepVerify, ce.Step, "%v", err)
	})
}

// TestSetuidCommandGetsNoPrivilege: the command's exec is traced, and the
// kernel does not honour the set-user-ID bit of a file executed under a
// trace its process asked for as the user. So a set-user-ID copy of touch
// (executable only by the user's group) runs as the user: it cannot make a
// file where only root may write.
func TestSetuidCommandGetsNoPrivilege(t *testing.T) {
	u := newUser(t)
	var fs unix.Statfs_t
	require.NoError(t, unix.Statfs(u.Base, &fs))
	if fs.Flags&unix.ST_NOSUID != 0 {
		t.Skipf("%s is mounted nosuid", u.Base)
	}
	bin, err := os.ReadFile("/usr/bin/touch")
	require.NoError(t, err)
	suid := filepath.Join(u.Base, "suid-touch")
	require.NoError(t, os.WriteFile(suid, bin, 0o700))
	require.NoError(t, os.Chown(suid, 0, int(u.GID)))
	require.NoError(t, os.Chmod(suid, 0o750|os.ModeSetuid))
	marker := filepath.Join(u.Base, "made-by-root")

	_, stderr, code, err := run(t, context.Background(), Spec{Identity: u.Identity, Path: suid, Args: []string{marker}})
	require.NoError(t, err)
	require.NotEqual(t, 0, code)
	require.Contains(t, stderr, "Permission denied")
	require.NoFileExists(t, marker, "the set-user-ID command ran as root")

	// Untraced, the same file would have run as root.
	cmd := exec.Command(suid, marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.FileExists(t, marker)
}

// TestStartAsKillsWrongCredentials: when the check at the exec fails, the
// command is killed before its first instruction, and it can still be
// waited for. Here the fork sets another uid than the launch expects.
func TestStartAsKillsWrongCredentials(t *testing.T) {
	u := newUser(t)
	l, err := plan(Spec{Identity: u.Identity, Path: "touch"}, 0, 0)
	require.NoError(t, err)
	open := filepath.Join(u.Base, "open")
	require.NoError(t, os.Mkdir(open, 0o777))
	require.NoError(t, os.Chmod(open, 0o777)) // whoever touch runs as could write here
	marker := filepath.Join(open, "ran")
	cmd := exec.Command("touch", marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID + 1, Gid: u.GID, Groups: l.Groups}}

	_, err = startAs(cmd, l)
	var ce *ChildError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, StepVerify, ce.Step)
	require.Contains(t, ce.Message, "uids")
	require.NotNil(t, cmd.Process)
	err = cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal())
	require.NoFileExists(t, marker, "the command ran")
}

// TestNotRootRunsAsItself: an agent that is not root runs commands as
// itself, untraced, and refuses any other user. The test binary runs
// itself as the test user for that.
func TestNotRootRunsAsItself(t *testing.T) {
	if os.Getenv("DESKRUN_RUNAS_AS_USER") != "" {
		uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
		me := identity.Identity{Username: "me", UID: uid, GID: gid, Home: os.Getenv("DESKRUN_RUNAS_AS_USER")}
		out, _, code, err := run(t, context.Background(), Spec{Identity: me, Path: "sh", Args: []string{"-c", "cat /proc/$$/status"}})
		require.NoError(t, err)
		require.Equal(t, 0, code)
		u := strconv.Itoa(int(uid))
		require.Equal(t, []string{u, u, u, u}, statusOf(t, out)["Uid"])
		other := me
		other.UID++
		_, err = Start(context.Background(), Spec{Identity: other, Path: "true"})
		require.ErrorIs(t, err, ErrNotRoot)
		return
	}
	u := newUser(t)
	self, err := os.ReadFile("/proc/self/exe")
	require.NoError(t, err)
	bin := filepath.Join(u.Base, "runas.test")
	require.NoError(t, os.WriteFile(bin, self, 0o755))
	cmd := exec.Command(bin, "-test.run", "^TestNotRootRunsAsItself$", "-test.v")
	cmd.Env = []string{"DESKRUN_RUNAS_AS_USER=" + u.Home, "PATH=" + DefaultPath}
	cmd.Dir = u.Home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "--- PASS: TestNotRootRunsAsItself")
}

// TestRefuseKeptCapabilities: a thread whose securebits keep capabilities
// through setuid does not start a command.
func TestRefuseKeptCapabilities(t *testing.T) {
	u := newUser(t)
	type result struct{ prctl, start error }
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, and its
		// securebits with it.
		runtime.LockOSThread()
		if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
			done <- result{prctl: err}
			return
		}
		p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "/bin/true"})
		if err == nil {
			_, _ = p.Wait()
		}
		done <- result{start: err}
	}()
	r := <-done
	require.NoError(t, r.prctl)
	require.ErrorIs(t, r.start, ErrRegainedRoot)
	require.ErrorContains(t, r.start, "KEEP_CAPS")
}

func TestChildErrors(t *testing.T) {
	u := newUser(t)
	notDir := filepath.Join(u.Base, "file")
	require.NoError(t, os.WriteFile(notDir, nil, 0o644))
	noExec := filepath.Join(u.Base, "noexec")
	require.NoError(t, os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644))
	for _, tt := range []struct {
		name string
		dir  string
		path string
		step string
	}{
		{"no such directory", "/nonexistent", "true", StepChdir},
		{"not a directory", notDir, "true", StepChdir},
		// Root could enter it: the chdir happens after the drop.
		{"directory the user cannot enter", "/root", "true", StepChdir},
		{"no such command", "", "no-such-command-drr", StepLookPath},
		{"not executable", "", noExec, StepExec},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Start(context.Background(), Spec{Identity: u.Identity, Dir: tt.dir, Path: tt.path})
			var ce *ChildError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tt.step, ce.Step, "%v", err)
			require.NotErrorIs(t, err, ErrRegainedRoot)
		})
	}
}

// TestLookPathAsUser: a command without a slash is looked up with the
// user's permissions, not root's.
func TestLookPathAsUser(t *testing.T) {
	u := newUser(t)
	dirs := map[string]os.FileMode{"rootonly": 0o755, "hidden": 0o700, "user": 0o755}
	for name, mode := range dirs {
		d := filepath.Join(u.Base, name)
		require.NoError(t, os.Mkdir(d, mode))
		require.NoError(t, os.Chmod(d, mode))
	}
	script := func(dir, name string, mode os.FileMode) {
		p := filepath.Join(u.Base, dir, name)
		require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\necho "+dir+"\n"), mode))
		require.NoError(t, os.Chmod(p, mode))
	}
	script("rootonly", "drcmd", 0o700) // only root may execute it
	script("hidden", "drcmd", 0o755)   // in a directory only root may search
	script("user", "drcmd", 0o755)
	script("rootonly", "drgroup", 0o750)
	require.NoError(t, os.Chown(filepath.Join(u.Base, "rootonly", "drgroup"), 0, int(u.SuppGID)))
	path := func(dirs ...string) []string {
		for i, d := range dirs {
			dirs[i] = filepath.Join(u.Base, d)
		}
		return []string{"PATH=" + strings.Join(dirs, ":")}
	}

	out, _, code, err := run(t, context.Background(), Spec{Identity: u.Identity, Path: "drcmd", Env: path("rootonly", "hidden", "user")})
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.Equal(t, "user\n", out, "root's files are not chosen")

	out, _, code, err = run(t, context.Background(), Spec{Identity: u.Identity, Path: "drgroup", Env: path("rootonly")})
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.Equal(t, "rootonly\n", out, "a supplementary group's execute bit counts")

	_, err = Start(context.Background(), Spec{Identity: u.Identity, Path: "drcmd", Env: path("rootonly", "hidden")})
	var ce *ChildError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, StepLookPath, ce.Step)
}

// lineWriter sends the first line written to it.
type lineWriter struct {
	once  sync.Once
	buf   bytes.Buffer
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if i := bytes.IndexByte(w.buf.Bytes(), '\n'); i >= 0 {
		w.once.Do(func() { w.lines <- string(w.buf.Bytes()[:i]) })
	}
	return len(p), nil
}

func startGrandchild(t *testing.T, ctx context.Context, u testUser, noCgroup bool, script string) (*Process, int) {
	t.Helper()
	w := &lineWriter{lines: make(chan string, 1)}
	p, err := Start(ctx, Spec{Identity: u.Identity, Path: "sh", Args: []string{"-c", script},
		Stdout: w, NoCgroup: noCgroup})
	require.NoError(t, err)
	t.Cleanup(func() { p.Kill(); _, _ = p.Wait() })
	select {
	case line := <-w.lines:
		pid, err := strconv.Atoi(strings.TrimSpace(line))
		require.NoError(t, err, "line %q", line)
		require.NoError(t, syscall.Kill(pid, 0), "the grandchild runs")
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		require.NoError(t, err)
		require.Regexp(t, fmt.Sprintf(`(?m)^Uid:\s+%d\s+%d\s+%d\s+%d$`, u.UID, u.UID, u.UID, u.UID), string(st), "the grandchild runs as the user")
		return p, pid
	case <-time.After(10 * time.Second):
		t.Fatal("no grandchild pid printed")
		return nil, 0
	}
}

// requireGone waits until pid no longer runs: it does not exist, or it is
// a zombie waiting for init (here PID 1 is not always a prompt reaper).
func requireGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			return
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containments(t *testing.T) []bool {
	modes := []bool{true} // NoCgroup: the process group only
	if _, err := CgroupParent(); err == nil {
		modes = append(modes, false)
	} else {
		t.Logf("no cgroup here (%v): testing the process group only", err)
	}
	return modes
}

func TestCancelKillsGrandchild(t *testing.T) {
	u := newUser(t)
	for _, noCgroup := range containments(t) {
		t.Run(fmt.Sprintf("NoCgroup=%v", noCgroup), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p, pid := startGrandchild(t, ctx, u, noCgroup, "sleep 300 & echo $!; wait")
			if noCgroup {
				require.Equal(t, ContainProcessGroup, p.Containment())
			} else {
				require.Equal(t, ContainCgroup, p.Containment())
			}
			cancel()
			code, err := p.Wait()
			require.ErrorIs(t, err, ErrCancelled)
			require.ErrorIs(t, err, context.Canceled)
			require.Equal(t, 128+int(syscall.SIGKILL), code)
			requireGone(t, pid)
			if cg := p.Cgroup(); cg != "" {
				require.NoDirExists(t, cg, "the run's cgroup is removed")
			}
		})
	}
}

// TestEndOfRunKillsLeftovers: a command that exits leaves nothing running.
func TestEndOfRunKillsLeftovers(t *testing.T) {
	u := newUser(t)
	for _, noCgroup := range containments(t) {
		t.Run(fmt.Sprintf("NoCgroup=%v", noCgroup), func(t *testing.T) {
			p, pid := startGrandchild(t, context.Background(), u, noCgroup, "sleep 300 >/dev/null & echo $!; read x </dev/null; exit 3")
			code, err := p.Wait()
			require.NoError(t, err)
			require.Equal(t, 3, code)
			requireGone(t, pid)
		})
	}
}

func TestCgroupCatchesSetsid(t *testing.T) {
	u := newUser(t)
	if _, err := CgroupParent(); err != nil {
		t.Skipf("no writable cgroup v2 here: %v", err)
	}
	p, pid := startGrandchild(t, context.Background(), u, false, "setsid sleep 300 & echo $!; wait")
	require.Equal(t, ContainCgroup, p.Containment())
	requireEventually(t, func() bool { return unixGetsid(pid) == pid }, "the grandchild left the session and process group")
	p.Kill()
	_, err := p.Wait()
	require.ErrorIs(t, err, ErrKilled)
	requireGone(t, pid)
}

func requireEventually(t *testing.T, ok func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTimeout(t *testing.T) {
	u := newUser(t)
	start := time.Now()
	_, _, code, err := run(t, context.Background(), Spec{Identity: u.Identity, Path: "sleep", Args: []string{"300"},
		Timeout: 300 * time.Millisecond})
	require.ErrorIs(t, err, ErrTimeout)
	require.NotErrorIs(t, err, ErrCancelled)
	require.Equal(t, 128+int(syscall.SIGKILL), code)
	require.Less(t, time.Since(start), 10*time.Second)
}

func TestCancelBeforeStart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Start(ctx, Spec{Identity: alice, Path: "true"})
	require.ErrorIs(t, err, ErrCancelled)
}

// countingWriter counts and forgets.
type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// TestOutputDoesNotGrowMemory: 50 MB of output pass through a fixed
// buffer. If the agent kept them, the bytes allocated would exceed 50 MB.
func TestOutputDoesNotGrowMemory(t *testing.T) {
	u := newUser(t)
	const size = 50 << 20
	var out, errOut countingWriter
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "sh",
		Args:   []string{"-c", fmt.Sprintf("head -c %d /dev/zero; head -c %d /dev/zero >&2", size, size)},
		Stdout: &out, Stderr: &errOut})
	require.NoError(t, err)
	code, err := p.Wait()
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.EqualValues(t, size, out.n.Load())
	require.EqualValues(t, size, errOut.n.Load())
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("100 MB of output: %d KB allocated, heap in use %d → %d KB", allocated>>10, before.HeapInuse>>10, after.HeapInuse>>10)
	require.Less(t, allocated, uint64(8<<20), "output must not be buffered")
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestFailingWriterDoesNotBlockTheCommand(t *testing.T) {
	u := newUser(t)
	p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "head", Args: []string{"-c", "1000000", "/dev/zero"},
		Stdout: failingWriter{}, Timeout: 30 * time.Second})
	require.NoError(t, err)
	code, err := p.Wait()
	require.Equal(t, 0, code, "the command ran to its end")
	require.ErrorContains(t, err, "disk full")
	require.NotErrorIs(t, err, ErrTimeout)
}

func TestRunDir(t *testing.T) {
	u := newUser(t)
	dir, err := CreateRunDir(u.Base, "run-1", u.UID, u.GID)
	require.NoError(t, err)
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.ModeDir|0o700, st.Mode())
	require.Equal(t, u.UID, st.Sys().(*syscall.Stat_t).Uid)
	require.Equal(t, u.GID, st.Sys().(*syscall.Stat_t).Gid)

	_, err = CreateRunDir(u.Base, "run-1", u.UID, u.GID)
	require.Error(t, err, "a run directory is never reused")
	for _, bad := range []string{"", ".", "..", "a/b"} {
		_, err = CreateRunDir(u.Base, bad, u.UID, u.GID)
		require.Error(t, err, "name %q", bad)
	}
	_, err = CreateRunDir(dir, "x", u.UID, u.GID)
	require.ErrorContains(t, err, "must belong to root", "a base the user owns is refused")
	link := filepath.Join(u.Base, "link")
	require.NoError(t, os.Symlink(u.Base, link))
	_, err = CreateRunDir(link, "x", u.UID, u.GID)
	require.ErrorContains(t, err, "not a directory", "a base that is a link is refused")

	// The user plants links to a file and a directory of root's; removing
	// the run directory removes the links, not their targets.
	precious := filepath.Join(u.Base, "precious")
	require.NoError(t, os.MkdirAll(filepath.Join(precious, "sub"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(precious, "file"), []byte("keep"), 0o600))
	_, _, code, err := run(t, context.Background(), Spec{Identity: u.Identity, Dir: dir, Path: "sh",
		Args: []string{"-c", fmt.Sprintf("ln -s %s d && ln -s %s/file f && mkdir -p x/y && chmod 000 x", precious, precious)}})
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.NoError(t, RemoveRunDir(dir))
	require.NoDirExists(t, dir)
	require.FileExists(t, filepath.Join(precious, "file"))
	require.DirExists(t, filepath.Join(precious, "sub"))
}

func unixGetsid(pid int) int {
	sid, err := unix.Getsid(pid)
	if err != nil {
		return -1
	}
	return sid
}

// liveProcesses lists the processes of uid that are not zombies.
func liveProcesses(uid uint32) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil || !bytes.Contains(st, []byte(fmt.Sprintf("\nUid:\t%d\t", uid))) ||
			bytes.Contains(st, []byte("\nState:\tZ")) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// TestBeforeKill: the hook runs while the tree is still alive, with the
// cause, exactly once.
func TestBeforeKill(t *testing.T) {
	u := newUser(t)
	for _, tt := range []struct {
		name    string
		script  string
		timeout time.Duration
		want    error
	}{
		{"exit", "sleep 300 >/dev/null & echo $!; exec sleep 0.2", 0, nil},
		{"timeout", "sleep 300 & echo $!; wait", 300 * time.Millisecond, ErrTimeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			var alive atomic.Bool
			var cause error
			w := &lineWriter{lines: make(chan string, 1)}
			p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "sh", Args: []string{"-c", tt.script},
				Stdout: w, Timeout: tt.timeout,
				BeforeKill: func(c error) {
					calls.Add(1)
					cause = c
					pid, _ := strconv.Atoi(strings.TrimSpace(<-w.lines))
					alive.Store(pid > 0 && syscall.Kill(pid, 0) == nil)
				}})
			require.NoError(t, err)
			_, err = p.Wait()
			require.Equal(t, int32(1), calls.Load())
			require.True(t, alive.Load(), "the grandchild still ran when the hook was called")
			if tt.want == nil {
				require.NoError(t, cause)
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, cause, tt.want)
				require.ErrorIs(t, err, tt.want)
			}
		})
	}
}

// BenchmarkStart: start /bin/true as a user and wait for it. start-ns/op
// is Start alone (until the command runs), check-ns/op the part of it
// spent stopped at the exec while the credentials are checked.
func BenchmarkStart(b *testing.B) {
	u := newUser(b)
	for _, noCgroup := range []bool{false, true} {
		b.Run(fmt.Sprintf("NoCgroup=%v", noCgroup), func(b *testing.B) {
			var start, check time.Duration
			for b.Loop() {
				t0 := time.Now()
				p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "/bin/true", NoCgroup: noCgroup})
				if err != nil {
					b.Fatal(err)
				}
				start += time.Since(t0)
				check += p.checkTook
				if code, err := p.Wait(); err != nil || code != 0 {
					b.Fatal(code, err)
				}
			}
			b.ReportMetric(float64(start.Nanoseconds())/float64(b.N), "start-ns/op")
			b.ReportMetric(float64(check.Nanoseconds())/float64(b.N), "check-ns/op")
		})
	}
}
