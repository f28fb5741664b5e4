package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// Mem is a process's memory as the kernel sees it.
type Mem struct {
	RSS int64 `json:"rss_bytes"` // VmRSS, /proc/PID/status
	PSS int64 `json:"pss_bytes"` // Pss, /proc/PID/smaps_rollup
}

// ReadMem reads pid's resident and proportional set sizes.
func ReadMem(pid int) (Mem, error) {
	var m Mem
	var err error
	if m.RSS, err = procKB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:"); err != nil {
		return m, err
	}
	if m.PSS, err = procKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:"); err != nil {
		return m, err
	}
	return m, nil
}

// procKB reads a "Key:   123 kB" line and returns bytes.
func procKB(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", path, key, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("%s: no %s line", path, key)
}

// ReadCPU returns the user plus system CPU time pid has used.
func ReadCPU(pid int) (time.Duration, error) {
	self, _, err := readCPUs(pid)
	return self, err
}

// readCPUs returns the user plus system CPU time pid has used, and that of
// its children it has waited for.
func readCPUs(pid int) (self, children time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces; fields restart after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 { // state is field 3; utime, stime, cutime, cstime 14–17
		return 0, 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var t [4]int64
	for k := range t {
		if t[k], err = strconv.ParseInt(f[11+k], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: malformed times", pid)
		}
	}
	return time.Duration(t[0]+t[1]) * clockTick, time.Duration(t[2]+t[3]) * clockTick, nil
}
