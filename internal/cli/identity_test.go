package cli_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// These tests drive the real binary: explain, diagnose logon, doctor and
// agent install-pam, against real users from test/fixtures/pam-users.sh
// (prefix drt_cli_, so they never touch the users of the pam package's
// tests running in parallel).

var binary struct {
	once sync.Once
	path string
	err  error
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func deskrunBin(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		dir, err := os.MkdirTemp("", "deskrun-bin-")
		if err != nil {
			binary.err = err
			return
		}
		binary.path = filepath.Join(dir, "deskrun")
		cmd := exec.Command("go", "build", "-o", binary.path, "./cmd/deskrun")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			binary.err = err
			binary.path = string(out)
		}
	})
	require.NoError(t, binary.err, binary.path)
	return binary.path
}

type run struct {
	stdout, stderr string
	code           int
}

func deskrun(t *testing.T, env []string, stdin string, args ...string) run {
	t.Helper()
	cmd := exec.Command(deskrunBin(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := run{stdout: o.String(), stderr: e.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return r
}

func TestExplainBinary(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ query, reason, status string }{
		{"-1073741477", "LogonTypeNotGranted", "0xC000015B"},
		{"-1073445812", "UpnFormatInvalid", "0xC004844C"},
		{"-1073741062", "SmartCardRequired", "0xC00002FA"},
		{"3221226036", "AccountLockedOut", "0xC0000234"},
		{"data 532", "PasswordExpired", "0xC0000071"},
		{"PAM_ACCT_EXPIRED", "AccountExpired", "0xC0000193"},
	} {
		r := deskrun(t, nil, "", "explain", c.query)
		require.Equal(t, 0, r.code, r.stderr)
		require.Contains(t, r.stdout, c.reason+" (code WindowsIdentityIncorrect)")
		require.Contains(t, r.stdout, c.status)
		require.Contains(t, r.stdout, "fix:")

		r = deskrun(t, nil, "", "explain", c.query, "--json")
		require.Equal(t, 0, r.code, r.stderr)
		var out struct {
			Entries []struct {
				Reason        string `json:"reason"`
				Code          string `json:"code"`
				Status        string `json:"status"`
				StatusDecimal int64  `json:"status_decimal"`
				Resolution    string `json:"resolution"`
			} `json:"entries"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
		require.Equal(t, c.reason, out.Entries[0].Reason)
		require.Equal(t, "WindowsIdentityIncorrect", out.Entries[0].Code)
		require.Equal(t, c.status, out.Entries[0].Status)
	}
	r := deskrun(t, nil, "", "explain", "PasswrdExpired")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "not in the catalog")
	require.Contains(t, r.stderr, "PasswordExpired")
	r = deskrun(t, nil, "", "explain", "-1073741000", "--json")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, `"code": "NotFound"`)
	require.Equal(t, 2, deskrun(t, nil, "", "explain").code)
}

const fixturePassword = "Secret123!"

// pamFixture creates the drt_cli_ users and installs deskrun's stack with
// the binary itself, in a private directory; it returns the env that points
// diagnose and doctor at it.
func pamFixture(t *testing.T) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("PAM tests need root, and CI runs as root")
		}
		t.Skip("needs root: run as root or via .ci/run")
	}
	dir := t.TempDir()
	env := []string{"DESKRUN_PAM_FIXTURE_DIR=" + dir, "DESKRUN_PAM_FIXTURE_PREFIX=drt_cli_"}
	script := filepath.Join(repoRoot(), "test", "fixtures", "pam-users.sh")
	sh := func(verb string) ([]byte, error) {
		cmd := exec.Command("bash", script, verb)
		cmd.Env = append(os.Environ(), env...)
		return cmd.CombinedOutput()
	}
	out, err := sh("setup")
	t.Cleanup(func() { _, _ = sh("teardown") })
	require.NoError(t, err, string(out))
	pamEnv := []string{
		"DESKRUN_PAM_DIR=" + filepath.Join(dir, "pam.d"),
		"DESKRUN_PAM_CONFIG_DIR=" + filepath.Join(dir, "config"),
		"DESKRUN_FAILLOCK_DIR=" + filepath.Join(dir, "faillock"),
		"DESKRUN_NOLOGIN_FILE=" + filepath.Join(dir, "nologin"),
	}
	r := deskrun(t, pamEnv, "", "agent", "install-pam", "--directory", "none")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "deskrun-batch")
	return pamEnv
}

func TestDiagnoseAndDoctorBinary(t *testing.T) {
	env := pamFixture(t)

	t.Run("diagnose", func(t *testing.T) {
		cases := []struct {
			name, user, stdin string
			args              []string
			code              int
			want              []string
		}{
			{"ok", "drt_cli_ok", fixturePassword + "\n", nil, 0, []string{"logon ok: drt_cli_ok as drt_cli_ok", "shell /bin/bash"}},
			{"sha512 network", `.\drt_cli_sha512`, fixturePassword, []string{"--logon-type", "network"}, 0, []string{"network logon, PAM service deskrun-network"}},
			{"expiry warning", "drt_cli_warn", fixturePassword + "\n", nil, 0, []string{"warning: PasswordExpiresSoon in 5 days", "chage"}},
			{"wrong password", "drt_cli_wrongpw", "Not-The-Password-42\n", nil, 1, []string{"WindowsIdentityIncorrect (WrongPassword)", "0xC000006D (-1073741715)", "authenticate → PAM_AUTH_ERR", "resolution:"}},
			{"batch not granted", "drt_cli_denied_batch", fixturePassword, []string{"--logon-type", "batch"}, 1, []string{"LogonTypeNotGranted", "0xC000015B (-1073741477)", "acct_mgmt → PAM_PERM_DENIED"}},
			{"no logon hours", "drt_cli_denied_time", fixturePassword, nil, 1, []string{"InvalidLogonHours", "-1073741713"}},
			{"disabled", "drt_cli_locked", fixturePassword, nil, 1, []string{"AccountDisabled", "usermod -U"}},
			{"expired account", "drt_cli_acctexpired", fixturePassword, nil, 1, []string{"AccountExpired", "-1073741421"}},
			{"must change", "drt_cli_mustchange", fixturePassword, nil, 1, []string{"PasswordMustChange", "-1073741276"}},
			{"password expired", "drt_cli_pwexpired", fixturePassword, nil, 1, []string{"PasswordExpired", "-1073741711"}},
			{"nologin shell", "drt_cli_nologinshell", fixturePassword, nil, 1, []string{"AccountRestriction", "not in /etc/shells"}},
			{"no such user", "drt_cli_nobody", fixturePassword, nil, 1, []string{"NoSuchUser", "PAM_USER_UNKNOWN"}},
			{"empty password", "drt_cli_ok", "\n", nil, 1, []string{"EmptyPassword"}},
			{"NUL in password", "drt_cli_ok", "Secret\x00123!", nil, 1, []string{"PasswordFormatInvalid", "NUL"}},
			{"1 MB password", "drt_cli_ok", strings.Repeat("x", 1<<20), nil, 1, []string{"PasswordFormatInvalid", "4096"}},
			{"newline in username", "drt_cli_ok\nroot", fixturePassword, nil, 1, []string{"UpnFormatInvalid", "0xC004844C (-1073445812)", "not joined"}},
			{"unknown logon type", "drt_cli_ok", fixturePassword, []string{"--logon-type", "service"}, 2, []string{"interactive, batch or network"}},
		}
		for _, c := range cases {
			args := append([]string{"diagnose", "logon", c.user, "--password-stdin"}, c.args...)
			r := deskrun(t, env, c.stdin, args...)
			require.Equal(t, c.code, r.code, "%s: %s%s", c.name, r.stdout, r.stderr)
			all := r.stdout + r.stderr
			for _, w := range c.want {
				require.Contains(t, all, w, c.name)
			}
			if len(c.stdin) > 4 && len(c.stdin) < 100 {
				require.NotContains(t, all, strings.TrimSpace(c.stdin), "%s: the password was printed", c.name)
			}
		}
		// JSON, success and failure.
		r := deskrun(t, env, fixturePassword, "diagnose", "logon", "drt_cli_warn", "--password-stdin", "--json")
		require.Equal(t, 0, r.code, r.stderr)
		var ok struct {
			OK       bool `json:"ok"`
			Identity struct {
				Username string `json:"username"`
				UID      uint32 `json:"uid"`
			} `json:"identity"`
			Warnings []struct {
				Reason string `json:"reason"`
				Days   int    `json:"days"`
			} `json:"warnings"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &ok))
		require.True(t, ok.OK)
		require.Equal(t, "drt_cli_warn", ok.Identity.Username)
		require.Equal(t, 5, ok.Warnings[0].Days)
		r = deskrun(t, env, "Not-The-Password-42", "diagnose", "logon", "drt_cli_wrongpw", "--password-stdin", "--json")
		require.Equal(t, 1, r.code)
		var fail struct {
			Error struct {
				Code          string `json:"code"`
				Reason        string `json:"reason"`
				StatusDecimal int64  `json:"status_decimal"`
				Definitive    bool   `json:"definitive"`
				Provider      struct {
					Result string `json:"result"`
				} `json:"provider"`
			} `json:"error"`
		}
		require.NoError(t, json.Unmarshal([]byte(r.stderr), &fail), r.stderr)
		require.Equal(t, "WrongPassword", fail.Error.Reason)
		require.EqualValues(t, -1073741715, fail.Error.StatusDecimal)
		require.True(t, fail.Error.Definitive)
		require.Equal(t, "PAM_AUTH_ERR", fail.Error.Provider.Result)
		require.NotContains(t, r.stdout+r.stderr, "Not-The-Password-42")
		// No terminal and no --password-stdin: a usage error, not a logon.
		r = deskrun(t, env, "", "diagnose", "logon", "drt_cli_ok")
		require.Equal(t, 2, r.code)
		require.Contains(t, r.stderr, "--password-stdin")
	})

	t.Run("doctor", func(t *testing.T) {
		r := deskrun(t, env, "", "doctor", "--user", "drt_cli_denied_batch", "--json")
		require.Equal(t, 1, r.code, r.stdout+r.stderr)
		var out struct {
			OK     bool `json:"ok"`
			Checks []struct{ Name, Status, Detail, Fix string }
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
		got := map[string]string{}
		for _, c := range out.Checks {
			got[c.Name] = c.Status + ": " + c.Detail
		}
		require.False(t, out.OK)
		require.Regexp(t, `^pass`, got["root"])
		require.Regexp(t, `^pass`, got["pam service batch"])
		require.Regexp(t, `^pass: local-only`, got["join"])
		require.Equal(t, "skip: skipped: no domain configured", got["clock skew"])
		require.Regexp(t, `^pass`, got["nss"])
		require.Regexp(t, `^pass`, got["account"])
		require.Regexp(t, `^pass`, got["logon right interactive"])
		require.Regexp(t, `^fail: LogonTypeNotGranted.*0xC000015B -1073741477`, got["logon right batch"])

		r = deskrun(t, env, "", "doctor", "--user", "drt_cli_warn")
		require.Equal(t, 0, r.code, r.stdout+r.stderr)
		require.Regexp(t, `WARN\s+account\s+password expires in \d+ days`, r.stdout)

		for user, want := range map[string]string{
			"drt_cli_locked":      `FAIL\s+account\s+password locked`,
			"drt_cli_acctexpired": `FAIL\s+logon right interactive\s+AccountExpired`,
			"drt_cli_mustchange":  `FAIL\s+account\s+password must be changed`,
			"drt_cli_nobody":      `FAIL\s+nss\s+drt_cli_nobody`,
		} {
			r = deskrun(t, env, "", "doctor", "--user", user)
			require.Equal(t, 1, r.code, r.stdout)
			require.Regexp(t, want, r.stdout, user)
		}

		r = deskrun(t, []string{"DESKRUN_PAM_DIR=" + t.TempDir()}, "", "doctor")
		require.Equal(t, 1, r.code)
		require.Regexp(t, `FAIL\s+pam service interactive .* missing`, r.stdout)
		require.Contains(t, r.stdout, "fix: deskrun agent install-pam --pam-dir")
	})
}
