// Package runas runs a command as another operating-system user, the way a
// desktop-flow run needs it: the privileged agent never changes its own
// credentials. The Go runtime's fork/exec switches them in the forked child,
// between fork and exec: exactly the user's groups, then the gid, then the
// uid, then the run's directory (so the user's permissions apply to it), in
// a clean environment. The command is traced until its exec: stopped before
// its first instruction, its credentials are read from /proc and checked —
// the user's ids, exactly the user's groups, no capability left — and only
// then is it let go. Anything else kills it.
//
// This replaced re-executing the deskrun binary as a child that dropped
// privileges itself: that re-exec cost 7–15 ms per run (Go runtime start and
// package init of a 40 MB binary), the fork/exec and the check well under
// one.
//
// The command runs in its own process group and, where cgroup v2 is
// writable, in its own cgroup, which it enters at clone time: a timeout, a
// cancel or Kill ends the whole tree (grandchildren included), and so does
// the end of the command itself, so a run leaves nothing behind.
package runas

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/deskrun/deskrun/internal/identity"
)

// Spec is one command to run as a user.
type Spec struct {
	// Identity is the user to run as: UID, GID, Groups (exactly these
	// supplementary groups; GID is added if missing), Home, Shell, Username.
	Identity identity.Identity
	// Dir is the working directory; empty means Identity.Home.
	Dir string
	// Env is added to the clean environment of BaseEnv and wins over it.
	// Nothing of the agent's own environment reaches the command.
	Env []string
	// Path is the command; without a slash it is looked up in the PATH of
	// the command's environment, as the user: only a regular file the user
	// may execute, in directories the user may search, is chosen. Its exec
	// is traced, so a set-user-ID bit or file capabilities of Path give it
	// nothing, as on a nosuid mount (what it starts in turn is not traced).
	Path string
	// Args are the arguments after the command (argv[0] is Path).
	Args []string
	// Stdout and Stderr receive the output; nil discards it. Output is
	// copied through a fixed buffer, so a chatty command never grows the
	// agent's memory; a writer that fails is drained to nowhere so the
	// command does not block, and the failure is returned by Wait.
	Stdout, Stderr io.Writer
	// Timeout, if positive, kills the tree after that long (ErrTimeout).
	Timeout time.Duration
	// AllowRoot permits running as uid 0. Off by default: a flow that runs
	// as root is almost always a misconfigured connection.
	AllowRoot bool
	// NoCgroup keeps the run in a process group only, even where a cgroup
	// could be made.
	NoCgroup bool
	// BeforeKill, if set, is called once, before the tree is killed: with
	// nil when the command has exited by itself (what it started still
	// runs), or with ErrTimeout, ErrCancelled or ErrKilled (the command
	// still runs). A desktop run takes its screenshot here, while the
	// windows still exist. The kill waits for it: return promptly.
	BeforeKill func(cause error)
	// Logger receives the fallbacks (no cgroup, and why) and cleanup
	// failures; nil discards them.
	Logger *slog.Logger
	// Reaper, if set, is told about the run so that its processes die if
	// the agent does (StartReaper).
	Reaper *Reaper
}

// Errors returned by Start and Wait; test them with errors.Is.
var (
	// ErrTimeout: Spec.Timeout passed and the tree was killed.
	ErrTimeout = errors.New("runas: timed out")
	// ErrCancelled: the context of Start was cancelled and the tree was killed.
	ErrCancelled = errors.New("runas: cancelled")
	// ErrKilled: Kill was called.
	ErrKilled = errors.New("runas: killed")
	// ErrRunAsRoot: the target is uid 0 and Spec.AllowRoot is not set.
	ErrRunAsRoot = errors.New("runas: refusing to run as root (set AllowRoot to permit it)")
	// ErrNotRoot: the agent is not root, so it can run commands only as itself.
	ErrNotRoot = errors.New("runas: not running as root, so commands can run only as the current user")
	// ErrRegainedRoot: the command would have started with more than the
	// user's credentials (other ids or groups, capabilities left), or the
	// agent's securebits would let it keep capabilities. It was killed
	// before its first instruction, or not started.
	ErrRegainedRoot = errors.New("runas: the command could have run with more than the user's credentials")
	// ErrUnsupported: this operating system has no runas yet.
	ErrUnsupported = errors.New("runas: not supported on this operating system")
)

// ChildError is a failure to start the command as the user: it says which
// step failed (Step* constants). Nothing of the command ran.
type ChildError struct {
	Step    string
	Message string
}

// Steps of a start.
const (
	StepChdir      = "chdir"              // the run's directory is missing, or the user cannot enter it
	StepLookPath   = "lookpath"           // no command of that name the user may execute in PATH
	StepExec       = "exec"               // the forked child could not set the credentials or exec
	StepVerify     = "verify-credentials" // the started command has other ids or groups than the user's
	StepRegainRoot = "regain-root"        // it has root's ids or capabilities, or could keep them
)

func (e *ChildError) Error() string { return "runas: " + e.Step + ": " + e.Message }

// Is makes errors.Is(err, ErrRegainedRoot) true when the credentials were
// found wrong (StepVerify, StepRegainRoot).
func (e *ChildError) Is(target error) bool {
	return target == ErrRegainedRoot && (e.Step == StepRegainRoot || e.Step == StepVerify)
}

// Containment says how a run's process tree is held together and killed.
type Containment string

const (
	// ContainCgroup: the run has its own cgroup v2, killed with cgroup.kill
	// (which also catches processes that left the process group).
	ContainCgroup Containment = "cgroup"
	// ContainProcessGroup: the run is a process group, killed with
	// kill(-pgid). A process that calls setsid escapes it.
	ContainProcessGroup Containment = "process-group"
)

// DefaultPath is the PATH of a command whose Spec.Env sets none.
const DefaultPath = "/usr/local/bin:/usr/bin:/bin"

// BaseEnv is the clean environment a command starts from: HOME, USER,
// LOGNAME, SHELL and PATH of the user, and nothing else.
func BaseEnv(id identity.Identity) []string {
	shell := id.Shell
	if shell == "" {
		shell = "/bin/sh"
	}
	return []string{
		"HOME=" + id.Home,
		"USER=" + id.Username,
		"LOGNAME=" + id.Username,
		"SHELL=" + shell,
		"PATH=" + DefaultPath,
	}
}

// buildEnv is BaseEnv overlaid with extra, one entry per name, in a stable
// order (base names first, then extra names as they come).
func buildEnv(id identity.Identity, extra []string) ([]string, error) {
	var order []string
	vals := map[string]string{}
	add := func(kv string) error {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsRune(kv, 0) {
			return fmt.Errorf("runas: bad environment entry %q", firstPart(kv))
		}
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = kv
		return nil
	}
	for _, kv := range BaseEnv(id) {
		_ = add(kv)
	}
	for _, kv := range extra {
		if err := add(kv); err != nil {
			return nil, err
		}
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, vals[k])
	}
	return env, nil
}

// firstPart keeps an error from echoing a value that may be secret.
func firstPart(kv string) string {
	k, _, _ := strings.Cut(kv, "=")
	return k + "=…"
}

// groupList is exactly the user's groups, GID first, without duplicates.
// Built from an empty slice with room for all of them: starting from a
// slice of length n (and appending) is how nomad put gid 0 into every
// task's groups.
func groupList(id identity.Identity) []uint32 {
	out := make([]uint32, 0, len(id.Groups)+1)
	seen := make(map[uint32]bool, len(id.Groups)+1)
	for _, g := range append([]uint32{id.GID}, id.Groups...) {
		if !seen[g] {
			seen[g] = true
			out = append(out, g)
		}
	}
	return out
}

// launch is a Spec checked and resolved into what the fork/exec needs.
type launch struct {
	Drop   bool // change credentials (the agent is root)
	UID    uint32
	GID    uint32
	Groups []uint32 // exactly the user's, GID included (groupList)
	Dir    string   // absolute
	Path   string   // as in Spec: looked up at Start
	Args   []string // full argv, argv[0] included
	Env    []string
}

// plan turns a Spec into a launch, for an agent whose effective uid and
// gid are euid and egid.
//
// WARNING: security-sensitive (who may run as whom). Run
// go test ./internal/runas -run 'TestPlan|TestRunAsUser|TestAllowRoot' as root.
func plan(s Spec, euid, egid int) (launch, error) {
	id := s.Identity
	if s.Path == "" {
		return launch{}, errors.New("runas: no command")
	}
	if id.UID == 0 && !s.AllowRoot {
		return launch{}, ErrRunAsRoot
	}
	dir := s.Dir
	if dir == "" {
		dir = id.Home
	}
	if dir == "" {
		return launch{}, errors.New("runas: no working directory (Dir) and no home")
	}
	if !filepath.IsAbs(dir) {
		return launch{}, fmt.Errorf("runas: working directory %q is not absolute", dir)
	}
	env, err := buildEnv(id, s.Env)
	if err != nil {
		return launch{}, err
	}
	if euid != 0 && (uint32(euid) != id.UID || uint32(egid) != id.GID) {
		return launch{}, fmt.Errorf("%w (uid %d, asked for %d)", ErrNotRoot, euid, id.UID)
	}
	return launch{
		Drop:   euid == 0,
		UID:    id.UID,
		GID:    id.GID,
		Groups: groupList(id),
		Dir:    dir,
		Path:   s.Path,
		Args:   append([]string{s.Path}, s.Args...),
		Env:    env,
	}, nil
}

// Process is a running command. Wait for it exactly as with exec.Cmd: once.
type Process struct {
	cmd         *exec.Cmd
	pid         int
	containment Containment
	cgroup      string // directory, when containment is ContainCgroup
	dropped     bool
	checkTook   time.Duration // the stop at exec and the credential check (BenchmarkStart)
	log         *slog.Logger
	reaper      *Reaper

	mu     sync.Mutex
	reason error // why we killed it (ErrTimeout, ErrCancelled, ErrKilled)
	exited bool  // the leader has exited (maybe not reaped yet)
	reaped bool  // the leader is reaped: its pid may be reused, never signal it

	beforeKill     func(error)
	beforeKillOnce sync.Once

	killReq chan struct{}
	done    chan struct{}
	code    int
	err     error

	sys sysState
}

func (p *Process) callBeforeKill(cause error) {
	if p.beforeKill != nil {
		p.beforeKillOnce.Do(func() { p.beforeKill(cause) })
	}
}

// Pid is the process id of the command (the process group id, too).
func (p *Process) Pid() int { return p.pid }

// Containment says whether the tree is held by a cgroup or a process group.
func (p *Process) Containment() Containment { return p.containment }

// Cgroup is the run's cgroup directory, or "" without one.
func (p *Process) Cgroup() string { return p.cgroup }

// Dropped reports whether the command runs with the user's credentials
// switched to by the agent (and checked); false
// when the agent is not root and ran the command as itself.
func (p *Process) Dropped() bool { return p.dropped }

// Kill kills the whole tree; Wait then returns ErrKilled. Safe to call
// more than once, and after the command ended (then it does nothing).
func (p *Process) Kill() {
	select {
	case p.killReq <- struct{}{}: // buffered: never lost, never blocks
	default: // a kill is already requested
	}
}

// Wait waits for the command and everything it started to end. exitCode
// is the command's exit status, or 128+signal if a signal ended it. err
// is nil when the command ran to its end, whatever its status; it is
// ErrTimeout, ErrCancelled or ErrKilled (wrapped) when we ended it, or an
// output error when a Stdout or Stderr writer failed.
func (p *Process) Wait() (exitCode int, err error) {
	<-p.done
	return p.code, p.err
}
