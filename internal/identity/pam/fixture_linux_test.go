//go:build linux && cgo

package pam_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/deskrun/deskrun/internal/identity/pam"
)

// The fixture: real users from test/fixtures/pam-users.sh and the stack
// that `deskrun agent install-pam` writes, in a private directory. Set up
// once per test binary (TestMain), torn down after.
const password = "Secret123!"

var fx struct {
	dir     string
	stack   pam.Stack
	module  string // path of the test-only pam_drtest.so
	err     error
	setupMu sync.Once
}

func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "test", "fixtures", "pam-users.sh")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fx.dir != "" {
		cmd := exec.Command("bash", script(), "teardown")
		cmd.Env = append(os.Environ(), "DESKRUN_PAM_FIXTURE_DIR="+fx.dir)
		_ = cmd.Run()
		os.RemoveAll(fx.dir)
	}
	os.Exit(code)
}

// needFixture skips off CI when not root, fails on CI, and sets the
// fixture up once.
func needFixture(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			tb.Fatal("PAM tests need root, and CI runs as root")
		}
		tb.Skip("needs root: run as root or via .ci/run")
	}
	fx.setupMu.Do(func() { fx.err = setup() })
	if fx.err != nil {
		tb.Fatalf("pam fixture: %v", fx.err)
	}
}

func setup() error {
	dir, err := os.MkdirTemp("", "deskrun-pam-")
	if err != nil {
		return err
	}
	fx.dir = dir
	cmd := exec.Command("bash", script(), "setup")
	cmd.Env = append(os.Environ(), "DESKRUN_PAM_FIXTURE_DIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pam-users.sh setup: %v\n%s", err, out)
	}
	fx.stack = pam.Stack{
		PAMDir:      filepath.Join(dir, "pam.d"),
		ConfigDir:   filepath.Join(dir, "config"),
		FaillockDir: filepath.Join(dir, "faillock"),
		NologinFile: filepath.Join(dir, "nologin"),
		Deny:        5,
		UnlockTime:  600,
	}
	if _, err := pam.Install(fx.stack); err != nil {
		return err
	}
	_, file, _, _ := runtime.Caller(0)
	fx.module = filepath.Join(dir, "pam_drtest.so")
	out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", fx.module,
		filepath.Join(filepath.Dir(file), "testdata", "pam_drtest.c"), "-lpam").CombinedOutput()
	if err != nil {
		return fmt.Errorf("build pam_drtest.so: %v\n%s", err, out)
	}
	return nil
}
