package world

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// FixturePassword is the password test/fixtures/pam-users.sh gives its users.
const FixturePassword = "Secret123!"

// PAM is a test package's PAM fixture: real local users in every state
// (test/fixtures/pam-users.sh) and the stack `deskrun agent install-pam`
// writes, in a private directory. It is set up once, by the first test
// that needs it, and torn down by Main.
type PAM struct {
	// Name tells the package's temp dirs apart.
	Name string
	// Prefix starts the fixture users' names; each package has its own so
	// that packages can run in parallel.
	Prefix string

	once sync.Once
	dir  string
	env  []string
	err  error
}

// Dir is the fixture directory: pam.d, config, faillock, nologin.
func (p *PAM) Dir() string { return p.dir }

// Env is the DESKRUN_PAM_* environment for an agent using the fixture.
func (p *PAM) Env() []string { return p.env }

func fixtureScript() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "fixtures", "pam-users.sh")
}

// Setup sets the fixture up, once, and fails the test if that failed. It
// needs root; callers check that first.
func (p *PAM) Setup(t *testing.T) {
	t.Helper()
	p.once.Do(func() {
		dir, err := os.MkdirTemp("", "deskrun-"+p.Name+"-pam-")
		if err != nil {
			p.err = err
			return
		}
		p.dir = dir
		p.env = []string{"DESKRUN_PAM_DIR=" + filepath.Join(dir, "pam.d"), "DESKRUN_PAM_CONFIG_DIR=" + filepath.Join(dir, "config"),
			"DESKRUN_FAILLOCK_DIR=" + filepath.Join(dir, "faillock"), "DESKRUN_NOLOGIN_FILE=" + filepath.Join(dir, "nologin")}
		cmd := exec.Command("bash", fixtureScript(), "setup")
		cmd.Env = append(os.Environ(), "DESKRUN_PAM_FIXTURE_DIR="+dir, "DESKRUN_PAM_FIXTURE_PREFIX="+p.Prefix)
		if out, err := cmd.CombinedOutput(); err != nil {
			p.err = fmt.Errorf("pam-users.sh: %v\n%s", err, out)
			return
		}
		cmd = exec.Command(Bin, "agent", "install-pam")
		cmd.Env = append(os.Environ(), p.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			p.err = fmt.Errorf("install-pam: %v\n%s", err, out)
		}
	})
	require.NoError(t, p.err)
}

// Teardown removes the fixture's users and directory, if Setup ran.
func (p *PAM) Teardown() {
	if p.dir == "" {
		return
	}
	cmd := exec.Command("bash", fixtureScript(), "teardown")
	cmd.Env = append(os.Environ(), "DESKRUN_PAM_FIXTURE_DIR="+p.dir, "DESKRUN_PAM_FIXTURE_PREFIX="+p.Prefix)
	_ = cmd.Run()
	os.RemoveAll(p.dir)
}
