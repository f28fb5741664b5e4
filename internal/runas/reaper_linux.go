package runas

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Reaper makes a run's processes die with its agent. It is a small root
// process, `deskrun be-child reaper`, started once by the agent: the agent
// tells it each run's process group and cgroup over a pipe as runs start
// and end. If the agent dies — kill -9 included — the pipe closes, and the
// reaper kills every run still listed, then exits. Without it the flows of
// a killed agent would run on, unowned, while their runs are reported lost.
type Reaper struct {
	mu  sync.Mutex
	w   *os.File
	cmd *exec.Cmd
}

// StartReaper starts the reaper from the deskrun binary exe ("" means
// os.Executable()).
func StartReaper(exe string) (*Reaper, error) {
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("reaper: find own binary: %w", err)
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("reaper: pipe: %w", err)
	}
	cmd := exec.Command(exe, "be-child", "reaper")
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{r} // fd 3
	// Its own process group: a signal to the agent's group (Ctrl-C) must
	// not kill the reaper before it has done its job.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("reaper: start: %w", err)
	}
	r.Close()
	go func() { _ = cmd.Wait() }() // reap it whenever it ends
	return &Reaper{w: w, cmd: cmd}, nil
}

func (r *Reaper) send(line string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil {
		_, _ = r.w.WriteString(line)
	}
}

// track lists a started run; untrack removes one that ended by itself.
func (r *Reaper) track(pid int, cgroup string) {
	r.send(fmt.Sprintf("+ %d %s\n", pid, cgroup))
}

func (r *Reaper) untrack(pid int) { r.send(fmt.Sprintf("- %d\n", pid)) }

// Close ends the reaper; it kills whatever runs are still listed, as it
// would if the agent had died.
func (r *Reaper) Close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil {
		r.w.Close()
		r.w = nil
	}
}

// BeReaper is the hidden `deskrun be-child reaper` mode: it reads "+ PID
// CGROUP" and "- PID" lines on fd 3 until the pipe closes, then kills each
// listed run's cgroup and process group.
//
// WARNING: security-sensitive (it sends SIGKILL as root). Run
// go test ./test/e2e -run TestAgentKilledMidRun as root after changing it.
func BeReaper() int {
	in := os.NewFile(3, "reaper")
	if in == nil {
		return 2
	}
	runs := map[int]string{}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid <= 1 {
			continue
		}
		switch f[0] {
		case "+":
			cg := ""
			if len(f) > 2 {
				cg = f[2]
			}
			runs[pid] = cg
		case "-":
			delete(runs, pid)
		}
	}
	for pid, cg := range runs {
		if cg != "" && strings.Contains(cg, "deskrun-runs") {
			_ = os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0)
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	return 0
}
