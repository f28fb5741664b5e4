package ldap_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/deskrun/deskrun/internal/identity/ldap"
)

// The fixture: a real Samba AD DC (test/fixtures/samba-ad.sh), provisioned
// once per test binary into a temporary SAMBA_DIR and torn down after.
const (
	password      = "Passw0rd!1"
	adminPassword = "Admin123!Pass"
	baseDN        = "DC=test,DC=example"
)

var dc struct {
	once sync.Once
	dir  string
	ca   []byte
	err  error
}

func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "test", "fixtures", "samba-ad.sh")
}

func TestMain(m *testing.M) {
	code := m.Run()
	teardownSlapd()
	if dc.dir != "" {
		_ = fixture("teardown")
		os.RemoveAll(filepath.Dir(dc.dir))
	}
	os.Exit(code)
}

// needRoot skips off CI when a fixture cannot run here (not root, or
// program missing and no apt-get to install it), and fails on CI.
func needRoot(tb testing.TB, program, what string) {
	tb.Helper()
	skip := func(why string) {
		if os.Getenv("CI") != "" {
			tb.Fatalf("%s: %s, and CI must run them", what, why)
		}
		tb.Skip(what + ": " + why + " (CI runs them as root)")
	}
	if os.Geteuid() != 0 {
		skip("needs root")
	}
	if _, err := exec.LookPath(program); err != nil {
		if _, err := exec.LookPath("apt-get"); err != nil {
			skip(program + " is not installed and apt-get is unavailable")
		}
	}
}

// needDC skips off CI when the DC cannot run here (not root, no apt-get)
// and fails on CI, then sets the DC up once.
func needDC(tb testing.TB) {
	tb.Helper()
	needRoot(tb, "samba", "Samba AD tests")
	dc.once.Do(func() { dc.err = setupDC() })
	if dc.err != nil {
		tb.Fatalf("samba fixture: %v", dc.err)
	}
}

func setupDC() error {
	parent, err := os.MkdirTemp("", "deskrun-samba-")
	if err != nil {
		return err
	}
	dc.dir = filepath.Join(parent, "dc")
	t0 := time.Now()
	if err := fixture("setup"); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "samba-ad.sh setup: %.1fs\n", time.Since(t0).Seconds())
	dc.ca, err = os.ReadFile(filepath.Join(dc.dir, "tls", "ca.pem"))
	return err
}

func fixture(cmd string) error {
	c := exec.Command("bash", script(), cmd)
	c.Env = append(os.Environ(), "SAMBA_DIR="+dc.dir)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("samba-ad.sh %s: %v\n%s", cmd, err, out)
	}
	return nil
}

// config is the provider's config for the fixture DC; service adds the
// read-only service account.
func config(service bool) ldap.Config {
	cfg := ldap.Config{
		URL:     "ldaps://127.0.0.1:636",
		CAPEM:   dc.ca,
		Domain:  "test.example",
		Machine: "test-machine",
		Timeout: 5 * time.Second,
	}
	if service {
		cfg.ServiceDN = "dr_svc@test.example"
		cfg.ServicePassword = []byte(password)
	}
	return cfg
}

// adminAttr reads one attribute of a user as the domain administrator.
func adminAttr(tb testing.TB, user, attr string) string {
	tb.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(dc.ca)
	conn, err := goldap.DialURL("ldaps://127.0.0.1:636", goldap.DialWithTLSConfig(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}))
	if err != nil {
		tb.Fatalf("admin dial: %v", err)
	}
	defer conn.Close()
	if err := conn.Bind("Administrator@test.example", adminPassword); err != nil {
		tb.Fatalf("admin bind: %v", err)
	}
	res, err := conn.Search(goldap.NewSearchRequest(baseDN, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases, 1, 0, false,
		"(sAMAccountName="+goldap.EscapeFilter(user)+")", []string{attr}, nil))
	if err != nil || len(res.Entries) != 1 {
		tb.Fatalf("admin search %s: %v", user, err)
	}
	return res.Entries[0].GetAttributeValue(attr)
}

func badPwdCount(tb testing.TB, user string) int {
	tb.Helper()
	n, err := strconv.Atoi(adminAttr(tb, user, "badPwdCount"))
	if err != nil {
		tb.Fatalf("badPwdCount of %s: %v", user, err)
	}
	return n
}
