//go:build linux

package runas

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ChildExitCode is the exit status of a child that gave up before starting
// the command (the parent learns why from the status pipe, not from this).
const ChildExitCode = 125

// BeChild is the hidden `deskrun be-child runas` mode, started by Start
// as root: it reads the spec from fd 3, drops to the user, proves it
// cannot become root again, changes directory and execs the command. It
// returns only when it gave up, with the exit status to use; the reason
// has been written to the parent.
//
// WARNING: security-sensitive (this is where root is given up). Run
// go test ./internal/runas as root (TestRunAsUser, TestRefuseRoot,
// TestChildRefusesRootWithoutFlag) after any change.
func BeChild() int {
	if _, err := unix.FcntlInt(statusFD, unix.F_GETFD, 0); err != nil {
		fmt.Fprintln(os.Stderr, "deskrun be-child runas is started by the deskrun agent, not by hand")
		return ChildExitCode
	}
	status := os.NewFile(statusFD, "status")
	syscall.CloseOnExec(statusFD) // the exec closes it: EOF tells the parent the command runs
	fail := func(step string, err error) int {
		b, _ := json.Marshal(ChildError{Step: step, Message: err.Error()})
		_, _ = status.Write(b)
		return ChildExitCode
	}
	specFile := os.NewFile(specFD, "spec")
	b, err := io.ReadAll(io.LimitReader(specFile, maxSpecBytes+1))
	specFile.Close()
	if _, werr := status.Write([]byte(statusReady)); werr != nil {
		return ChildExitCode // the parent is gone
	}
	if err == nil && len(b) > maxSpecBytes {
		err = errors.New("spec too large")
	}
	var cs childSpec
	if err == nil {
		err = json.Unmarshal(b, &cs)
	}
	if err != nil {
		return fail(StepReadSpec, err)
	}
	if step, err := becomeUser(cs); err != nil {
		return fail(step, err)
	}
	if err := syscall.Chdir(cs.Dir); err != nil {
		return fail(StepChdir, fmt.Errorf("%s: %w", cs.Dir, err))
	}
	path, err := lookPath(cs.Path, cs.Env)
	if err != nil {
		return fail(StepLookPath, err)
	}
	err = syscall.Exec(path, cs.Args, cs.Env)
	return fail(StepExec, fmt.Errorf("%s: %w", path, err))
}

// becomeUser sets exactly the user's groups, then the gid, then the uid
// (in that order: after setuid nothing else may be changed), checks the
// result and proves there is no way back to root. syscall.Setgroups,
// Setgid and Setuid apply to every thread of the process (Go ≥ 1.16).
//
// WARNING: security-sensitive. Run go test ./internal/runas -run
// 'TestRunAsUser|TestRefuseRoot|TestChildRefusesRootWithoutFlag' as root.
func becomeUser(cs childSpec) (step string, err error) {
	if cs.UID == 0 && !cs.AllowRoot {
		return StepVerify, ErrRunAsRoot
	}
	groups := make([]int, 0, len(cs.Groups))
	for _, g := range cs.Groups {
		groups = append(groups, int(g))
	}
	if cs.Drop {
		if err := syscall.Setgroups(groups); err != nil {
			return StepSetgroups, err
		}
		if err := syscall.Setgid(int(cs.GID)); err != nil {
			return StepSetgid, err
		}
		if err := syscall.Setuid(int(cs.UID)); err != nil {
			return StepSetuid, err
		}
	}
	if err := verifyCredentials(cs, groups); err != nil {
		return StepVerify, err
	}
	if cs.UID != 0 {
		if err := cannotRegainRoot(cs.GID); err != nil {
			return StepRegainRoot, err
		}
	}
	return "", nil
}

// verifyCredentials checks real, effective and saved ids, and (after a
// drop) that the supplementary groups are exactly the user's.
func verifyCredentials(cs childSpec, want []int) error {
	ru, eu, su := unix.Getresuid()
	rg, eg, sg := unix.Getresgid()
	if ru != int(cs.UID) || eu != int(cs.UID) || su != int(cs.UID) {
		return fmt.Errorf("uids are %d/%d/%d, want %d", ru, eu, su, cs.UID)
	}
	if rg != int(cs.GID) || eg != int(cs.GID) || sg != int(cs.GID) {
		return fmt.Errorf("gids are %d/%d/%d, want %d", rg, eg, sg, cs.GID)
	}
	if !cs.Drop {
		return nil
	}
	got, err := syscall.Getgroups()
	if err != nil {
		return fmt.Errorf("getgroups: %w", err)
	}
	got, want = slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		return fmt.Errorf("groups are %v, want %v", got, want)
	}
	return nil
}

// cannotRegainRoot tries every way back to root and fails if one works,
// and checks that no capability is left.
func cannotRegainRoot(gid uint32) error {
	if err := syscall.Setuid(0); err == nil {
		return errors.New("setuid(0) succeeded")
	}
	if err := syscall.Seteuid(0); err == nil {
		return errors.New("seteuid(0) succeeded")
	}
	if gid != 0 {
		if err := syscall.Setgid(0); err == nil {
			return errors.New("setgid(0) succeeded")
		}
		if err := syscall.Setegid(0); err == nil {
			return errors.New("setegid(0) succeeded")
		}
	}
	if err := syscall.Setgroups([]int{0}); err == nil {
		return errors.New("setgroups([0]) succeeded")
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// Inheritable capabilities grant nothing without ambient or file
		// capabilities, and setuid does not clear them, so they are not checked.
		for _, field := range []string{"CapPrm:", "CapEff:", "CapAmb:"} {
			if v, ok := strings.CutPrefix(line, field); ok && strings.Trim(strings.TrimSpace(v), "0") != "" {
				return fmt.Errorf("capabilities left: %s", line)
			}
		}
	}
	return nil
}

// lookPath resolves a command without a slash in the PATH of env, with
// the user's permissions (it runs after the drop).
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	if err := os.Setenv("PATH", path); err != nil {
		return "", err
	}
	return exec.LookPath(file)
}
