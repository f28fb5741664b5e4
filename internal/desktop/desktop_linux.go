//go:build linux

package desktop

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"image"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
	"golang.org/x/sys/unix"
)

// socketDir is where X servers put their sockets.
const socketDir = "/tmp/.X11-unix"

// Display is a running virtual screen. Close it when the run ends.
type Display struct {
	// Number is the display number Xvfb chose (DISPLAY=:Number).
	Number int
	// AuthFile is the Xauthority file with the display's cookie.
	AuthFile string
	// Width and Height of the screen, in pixels.
	Width, Height int

	cookie []byte
	cmd    *exec.Cmd
	pid    int
	log    *slog.Logger
	stderr *tail

	mu     sync.Mutex
	exited bool          // the server has exited (maybe not reaped yet)
	reaped chan struct{} // closed once the server is reaped

	closeOnce sync.Once
	closeErr  error
}

// Start starts Xvfb for one run, as the run's user, and waits until it
// accepts connections.
//
// WARNING: security-sensitive (root prepares files for a user and starts
// a server as that user). Run go test ./internal/desktop as root.
func Start(ctx context.Context, o Options) (*Display, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	root := os.Geteuid() == 0
	if !root && (uint32(os.Geteuid()) != o.UID || uint32(os.Getegid()) != o.GID) {
		return nil, fmt.Errorf("desktop: not root, so the display can only be the current user's (uid %d, asked for %d)", os.Geteuid(), o.UID)
	}
	if root {
		if err := prepareSocketDir(); err != nil {
			return nil, err
		}
	}
	cookie := make([]byte, 16)
	if _, err := rand.Read(cookie); err != nil {
		return nil, fmt.Errorf("desktop: cookie: %w", err)
	}
	authFile, err := writeAuthFile(o.Dir, cookie, o.UID, o.GID, root)
	if err != nil {
		return nil, err
	}
	d, err := startXvfb(ctx, o, authFile, cookie, root)
	if err != nil {
		os.Remove(authFile)
		return nil, err
	}
	return d, nil
}

// prepareSocketDir makes /tmp/.X11-unix root's, mode 1777, before a
// server runs as a user: a non-root Xvfb cannot make it and, left to
// itself, ends up owning it.
func prepareSocketDir() error {
	err := os.Mkdir(socketDir, 0o755)
	if err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("desktop: make %s: %w", socketDir, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(socketDir, &st); err != nil {
		return fmt.Errorf("desktop: %s: %w", socketDir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("desktop: %s is not a directory", socketDir)
	}
	if st.Uid != 0 || st.Gid != 0 {
		if err := os.Lchown(socketDir, 0, 0); err != nil {
			return fmt.Errorf("desktop: own %s: %w", socketDir, err)
		}
	}
	if st.Mode&0o7777 != 0o1777 {
		if err := os.Chmod(socketDir, os.ModeSticky|0o777); err != nil {
			return fmt.Errorf("desktop: chmod %s: %w", socketDir, err)
		}
	}
	return nil
}

// writeAuthFile creates dir/Xauthority, 0600, owned by the user. It opens
// the directory without following a link and creates the file exclusively,
// so a link the user planted is never written through.
func writeAuthFile(dir string, cookie []byte, uid, gid uint32, root bool) (string, error) {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("desktop: run directory: %w", err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, AuthFileName, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", fmt.Errorf("desktop: create Xauthority: %w", err)
	}
	f := os.NewFile(uintptr(fd), AuthFileName)
	defer f.Close()
	path := filepath.Join(dir, AuthFileName)
	if root {
		err = f.Chown(int(uid), int(gid))
	}
	if err == nil {
		_, err = f.Write(xauthority(cookie))
	}
	if err != nil {
		unix.Unlinkat(dfd, AuthFileName, 0)
		return "", fmt.Errorf("desktop: write Xauthority: %w", err)
	}
	return path, nil
}

func startXvfb(ctx context.Context, o Options, authFile string, cookie []byte, root bool) (*Display, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("desktop: pipe: %w", err)
	}
	defer r.Close()
	// -displayfd: Xvfb picks a free display and writes its number when it
	// accepts connections. -noreset: the last client leaving must not
	// reset the screen the screenshot is for.
	cmd := exec.Command(o.Xvfb, "-displayfd", "3",
		"-screen", "0", fmt.Sprintf("%dx%dx%d", o.Width, o.Height, o.Depth),
		"-nolisten", "tcp", "-auth", authFile, "-noreset")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + o.Dir}
	cmd.Dir = o.Dir
	cmd.ExtraFiles = []*os.File{w}
	stderr := &tail{max: 4 << 10}
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if root {
		// No supplementary groups: the server needs none of root's or the user's.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: o.UID, Gid: o.GID, Groups: []uint32{}}
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("desktop: start %s: %w", o.Xvfb, err)
	}
	d := &Display{
		Number: -1, AuthFile: authFile, Width: o.Width, Height: o.Height,
		cookie: cookie, cmd: cmd, pid: cmd.Process.Pid, log: o.Logger, stderr: stderr,
		reaped: make(chan struct{}),
	}
	go d.reap()

	number := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(io.LimitReader(r, 64)).ReadString('\n')
		number <- line
	}()
	timer := time.NewTimer(o.StartTimeout)
	defer timer.Stop()
	var line string
	select {
	case line = <-number:
	case <-timer.C:
		err = fmt.Errorf("desktop: Xvfb not ready after %s", o.StartTimeout)
	case <-ctx.Done():
		err = fmt.Errorf("desktop: start: %w", context.Cause(ctx))
	}
	if err == nil {
		n, aerr := strconv.Atoi(strings.TrimSpace(line))
		if aerr == nil {
			d.Number = n
		} else {
			<-d.reaped // no number means the server is gone or going
			err = fmt.Errorf("desktop: Xvfb failed (%s): %s", cmd.ProcessState, strings.TrimSpace(stderr.String()))
		}
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// reap waits for the server without reaping it, kills whatever is left in
// its process group while the group id cannot have been reused, then reaps.
func (d *Display) reap() {
	var info unix.Siginfo
	for unix.Waitid(unix.P_PID, d.pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
	}
	d.mu.Lock()
	d.exited = true
	_ = syscall.Kill(-d.pid, syscall.SIGKILL)
	d.mu.Unlock()
	_ = d.cmd.Wait()
	close(d.reaped)
}

// signal sends sig to the server's process group if it has not exited.
func (d *Display) signal(sig syscall.Signal) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.exited {
		_ = syscall.Kill(-d.pid, sig)
	}
}

// Env is what the run's programs need to use the display: DISPLAY and
// XAUTHORITY.
func (d *Display) Env() []string { return env(d.Number, d.AuthFile) }

// Close stops the server (SIGTERM, then SIGKILL after 3 s), reaps it, and
// removes its lock file, socket and the Xauthority file. Idempotent.
func (d *Display) Close() error {
	d.closeOnce.Do(func() {
		d.signal(syscall.SIGTERM)
		select {
		case <-d.reaped:
		case <-time.After(3 * time.Second):
			d.log.Warn("desktop_xvfb_sigkill", "display", d.Number)
			d.signal(syscall.SIGKILL)
			<-d.reaped
		}
		if d.Number >= 0 {
			d.removeLeftovers()
		}
		if err := os.Remove(d.AuthFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.closeErr = fmt.Errorf("desktop: remove Xauthority: %w", err)
		}
	})
	return d.closeErr
}

// removeLeftovers removes the lock file and socket of a server that could
// not clean up (it was killed), if the lock file names our server.
func (d *Display) removeLeftovers() {
	lock := fmt.Sprintf("/tmp/.X%d-lock", d.Number)
	b, err := os.ReadFile(lock)
	if err != nil {
		return
	}
	if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid != d.pid {
		return
	}
	_ = os.Remove(filepath.Join(socketDir, "X"+strconv.Itoa(d.Number)))
	_ = os.Remove(lock)
}

var quietXGB sync.Once

// Screenshot reads the whole screen from the X server.
func (d *Display) Screenshot(ctx context.Context) (*image.RGBA, error) {
	// xgb logs to a package logger when it finds no Xauthority of its own
	// (it never does: the cookie is ours to send, see cookieConn).
	quietXGB.Do(func() { xgb.Logger = log.New(io.Discard, "", 0) })
	var dialer net.Dialer
	nc, err := dialer.DialContext(ctx, "unix", filepath.Join(socketDir, "X"+strconv.Itoa(d.Number)))
	if err != nil {
		return nil, fmt.Errorf("desktop: connect to :%d: %w", d.Number, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	_ = nc.SetDeadline(deadline)
	conn, err := xgb.NewConnNet(&cookieConn{Conn: nc, cookie: d.cookie})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("desktop: connect to :%d: %w", d.Number, err)
	}
	defer conn.Close()
	setup := xproto.Setup(conn)
	scr := setup.DefaultScreen(conn)
	w, h := int(scr.WidthInPixels), int(scr.HeightInPixels)
	rep, err := xproto.GetImage(conn, xproto.ImageFormatZPixmap, xproto.Drawable(scr.Root),
		0, 0, uint16(w), uint16(h), ^uint32(0)).Reply()
	if err != nil {
		return nil, fmt.Errorf("desktop: get image: %w", err)
	}
	f := pixelFormat{MSBFirst: setup.ImageByteOrder == xproto.ImageOrderMSBFirst}
	for _, pf := range setup.PixmapFormats {
		if pf.Depth == rep.Depth {
			f.BPP, f.Pad = int(pf.BitsPerPixel), int(pf.ScanlinePad)
		}
	}
	for _, dep := range scr.AllowedDepths {
		for _, v := range dep.Visuals {
			if v.VisualId == rep.Visual {
				f.Red, f.Green, f.Blue = v.RedMask, v.GreenMask, v.BlueMask
			}
		}
	}
	return decode(rep.Data, w, h, f)
}

// ScreenshotPNG is Screenshot encoded as PNG.
func (d *Display) ScreenshotPNG(ctx context.Context) ([]byte, error) {
	img, err := d.Screenshot(ctx)
	if err != nil {
		return nil, err
	}
	return encodePNG(img)
}

// cookieConn authenticates xgb's connection with our cookie. xgb reads
// the cookie only from $XAUTHORITY or ~/.Xauthority of this process, which
// the agent must not change for one run; so the first write, xgb's setup
// request, is replaced by one that carries the display's cookie.
type cookieConn struct {
	net.Conn
	cookie []byte
	sent   bool // xgb writes the setup before it starts any goroutine
}

func (c *cookieConn) Write(p []byte) (int, error) {
	if c.sent {
		return c.Conn.Write(p)
	}
	c.sent = true
	if len(p) < 12 || p[0] != 'l' {
		return 0, errors.New("desktop: unexpected X setup request from xgb")
	}
	if _, err := c.Conn.Write(setupRequest(c.cookie)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
