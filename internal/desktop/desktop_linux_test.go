//go:build linux

package desktop

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"image/color"
	"image/png"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jezek/xgb"
	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/runas"
)

type testUser struct {
	UID, GID uint32
	Home     string
	Dir      string // a run directory: 0700, the user's, in a root-owned 0711 base
}

// newUser creates a real local user, removed when the test ends. It
// needs root and Xvfb; it skips off CI without them and fails on CI.
func newUser(t *testing.T) testUser {
	t.Helper()
	need := func(ok bool, what string) {
		if ok {
			return
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("desktop tests need %s, and CI has it", what)
		}
		t.Skipf("needs %s", what)
	}
	need(os.Geteuid() == 0, "root (run as root or via .ci/run)")
	for _, bin := range []string{DefaultXvfb, "/usr/bin/xsetroot"} {
		_, err := os.Stat(bin)
		need(err == nil, bin+" (apt-get install xvfb x11-xserver-utils)")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "drdt" + hex.EncodeToString(b[:])
	base, err := os.MkdirTemp("", "deskrun-desktop-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(base, 0o711))
	t.Cleanup(func() { os.RemoveAll(base) })
	home := filepath.Join(base, "home")
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command("useradd", "-m", "-d", home, "-s", "/bin/sh", "-U", name).CombinedOutput()
		if err == nil {
			break
		}
		if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
			t.Fatalf("useradd: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond) // another test holds the passwd lock
	}
	t.Cleanup(func() { _ = exec.Command("userdel", "-f", name).Run() })
	u, err := user.Lookup(name)
	require.NoError(t, err)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir := filepath.Join(base, "run")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chown(dir, uid, gid))
	return testUser{UID: uint32(uid), GID: uint32(gid), Home: home, Dir: dir}
}

// asUser runs a command as u on the display and returns its combined output.
func asUser(t *testing.T, u testUser, d *Display, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append([]string{"HOME=" + u.Home, "PATH=/usr/bin:/bin"}, d.Env()...)
	cmd.Dir = u.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s: %s", name, out)
}

func TestDisplayScreenshot(t *testing.T) {
	tests := []struct {
		depth int
		delta float64 // a 16-bit screen rounds colours to 5 or 6 bits
	}{{24, 0}, {16, 4}}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("depth=%d", tt.depth), func(t *testing.T) {
			u := newUser(t)
			ctx := context.Background()
			start := time.Now()
			d, err := Start(ctx, Options{UID: u.UID, GID: u.GID, Dir: u.Dir, Width: 640, Height: 360, Depth: tt.depth})
			require.NoError(t, err)
			t.Cleanup(func() { d.Close() })
			t.Logf("display :%d ready in %s", d.Number, time.Since(start))
			require.Equal(t, []string{"DISPLAY=:" + strconv.Itoa(d.Number), "XAUTHORITY=" + filepath.Join(u.Dir, AuthFileName)}, d.Env())

			// The server and the cookie are the user's.
			st, err := os.Stat(fmt.Sprintf("/proc/%d", d.pid))
			require.NoError(t, err)
			require.Equal(t, u.UID, st.Sys().(*syscall.Stat_t).Uid, "Xvfb runs as the user")
			st, err = os.Stat(d.AuthFile)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o600), st.Mode())
			require.Equal(t, u.UID, st.Sys().(*syscall.Stat_t).Uid)
			sd, err := os.Stat(socketDir)
			require.NoError(t, err)
			require.Equal(t, os.ModeDir|os.ModeSticky|0o777, sd.Mode())
			require.Zero(t, sd.Sys().(*syscall.Stat_t).Uid)

			asUser(t, u, d, "xsetroot", "-solid", "#ff8000")
			shot, err := d.ScreenshotPNG(ctx)
			require.NoError(t, err)
			img, err := png.Decode(bytes.NewReader(shot))
			require.NoError(t, err)
			require.Equal(t, 640, img.Bounds().Dx())
			require.Equal(t, 360, img.Bounds().Dy())
			for _, p := range [][2]int{{0, 0}, {320, 180}, {639, 359}} {
				c := color.RGBAModel.Convert(img.At(p[0], p[1])).(color.RGBA)
				require.InDelta(t, 0xff, c.R, tt.delta, "red at %v: %v", p, c)
				require.InDelta(t, 0x80, c.G, tt.delta, "green at %v: %v", p, c)
				require.InDelta(t, 0x00, c.B, tt.delta, "blue at %v: %v", p, c)
				require.Equal(t, uint8(0xff), c.A)
			}

			n, pid := d.Number, d.pid
			require.NoError(t, d.Close())
			require.NoError(t, d.Close(), "Close is idempotent")
			require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "Xvfb is gone and reaped")
			require.NoFileExists(t, fmt.Sprintf("/tmp/.X%d-lock", n))
			require.NoFileExists(t, filepath.Join(socketDir, "X"+strconv.Itoa(n)))
			require.NoFileExists(t, d.AuthFile)
		})
	}
}

// TestDisplayNeedsTheCookie: a client without it is refused, so another
// user on the machine cannot watch or drive the run's desktop.
func TestDisplayNeedsTheCookie(t *testing.T) {
	u := newUser(t)
	d, err := Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: u.Dir, Width: 320, Height: 200})
	require.NoError(t, err)
	defer d.Close()
	t.Setenv("XAUTHORITY", "/nonexistent")
	nc, err := net.Dial("unix", filepath.Join(socketDir, "X"+strconv.Itoa(d.Number)))
	require.NoError(t, err)
	_, err = xgb.NewConnNet(nc)
	require.ErrorContains(t, err, "authentication refused")

	other := &Display{Number: d.Number, cookie: bytes.Repeat([]byte{7}, 16)}
	_, err = other.Screenshot(context.Background())
	require.ErrorContains(t, err, "authentication refused", "a wrong cookie is refused")
}

func TestTwoDisplays(t *testing.T) {
	u := newUser(t)
	dir2 := filepath.Join(filepath.Dir(u.Dir), "run2")
	require.NoError(t, os.Mkdir(dir2, 0o700))
	require.NoError(t, os.Chown(dir2, int(u.UID), int(u.GID)))
	a, err := Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: u.Dir, Width: 320, Height: 200})
	require.NoError(t, err)
	defer a.Close()
	b, err := Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: dir2, Width: 320, Height: 200})
	require.NoError(t, err)
	defer b.Close()
	require.NotEqual(t, a.Number, b.Number)

	_, err = Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: u.Dir})
	require.Error(t, err, "one display per run directory: the Xauthority file exists")
}

func TestStartFails(t *testing.T) {
	u := newUser(t)
	_, err := Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: u.Dir, Xvfb: "/bin/false"})
	require.ErrorContains(t, err, "Xvfb failed")
	require.NoFileExists(t, filepath.Join(u.Dir, AuthFileName), "the cookie is removed")

	link := filepath.Join(filepath.Dir(u.Dir), "link")
	require.NoError(t, os.Symlink("/etc", link))
	_, err = Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: link})
	require.Error(t, err, "a run directory that is a link is refused")
	require.NoFileExists(t, "/etc/"+AuthFileName)

	// A server that never becomes ready: the timeout and a cancel both
	// stop it and leave nothing running.
	hang := filepath.Join(filepath.Dir(u.Dir), "hang")
	require.NoError(t, os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 300\n"), 0o755))
	_, err = Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: u.Dir, Xvfb: hang, StartTimeout: 200 * time.Millisecond})
	require.ErrorContains(t, err, "not ready after 200ms")
	require.Empty(t, liveProcesses(u.UID))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = Start(ctx, Options{UID: u.UID, GID: u.GID, Dir: u.Dir, Xvfb: hang})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, liveProcesses(u.UID))
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

// TestFailingFlowOnDisplay is the scenario with both libraries: a
// flow runs as the user (runas) on the run's display, starts an X client
// and fails; the screenshot is a PNG of the display's size showing it.
func TestFailingFlowOnDisplay(t *testing.T) {
	u := newUser(t)
	if _, err := os.Stat("/usr/bin/xmessage"); err != nil {
		t.Skip("needs xmessage (apt-get install x11-apps)")
	}
	d, err := Start(context.Background(), Options{UID: u.UID, GID: u.GID, Dir: u.Dir, Width: 800, Height: 600})
	require.NoError(t, err)
	defer d.Close()
	var stderr bytes.Buffer
	// xmessage maps its window, then the flow fails while it is shown. The
	// run kills what the flow left running, so the screenshot is taken in
	// BeforeKill, while the window still exists.
	script := `xsetroot -solid '#0040ff' && (xmessage -geometry 300x100+10+10 -bg '#ff8000' flow failed &) && sleep 1 && exit 7`
	var shot []byte
	var shotErr error
	p, err := runas.Start(context.Background(), runas.Spec{
		Identity: identity.Identity{Username: "flow", UID: u.UID, GID: u.GID, Home: u.Home, Shell: "/bin/sh"},
		Dir:      u.Dir, Path: "sh", Args: []string{"-c", script}, Env: d.Env(),
		Stderr: &stderr, Timeout: 30 * time.Second,
		BeforeKill: func(error) { shot, shotErr = d.ScreenshotPNG(context.Background()) },
	})
	require.NoError(t, err)
	code, err := p.Wait()
	require.NoError(t, err)
	require.Equal(t, 7, code, "stderr: %s", stderr.String())

	require.NoError(t, shotErr)
	img, err := png.Decode(bytes.NewReader(shot))
	require.NoError(t, err)
	require.Equal(t, 800, img.Bounds().Dx())
	require.Equal(t, 600, img.Bounds().Dy())
	require.Equal(t, color.RGBA{0x00, 0x40, 0xff, 0xff}, color.RGBAModel.Convert(img.At(700, 500)), "the root window")
	require.Equal(t, color.RGBA{0xff, 0x80, 0x00, 0xff}, color.RGBAModel.Convert(img.At(15, 105)), "the xmessage window")
}
