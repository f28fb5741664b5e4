package cli_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/seal"
)

// doctorDCAddr: this package's DC listens on its own loopback address, so
// the ldap and sssdtest packages' DCs can run at the same time.
const doctorDCAddr = "127.0.0.4"

// TestDoctorDirectoryBinary: doctor's domain checks against a real Samba
// AD DC (test/fixtures/samba-ad.sh), with the service password sealed by
// `deskrun agent directory set-service-password`; then the DC stopped
// (fail, with the fix) and started again (pass, nothing reconfigured).
func TestDoctorDirectoryBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the Samba DC tests need root, and CI runs as root")
		}
		t.Skip("needs root (starts a Samba AD DC): run as root or via .ci/run")
	}
	parent := t.TempDir()
	dcDir := filepath.Join(parent, "dc")
	samba := func(verb string) {
		t.Helper()
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "test", "fixtures", "samba-ad.sh"), verb)
		cmd.Env = append(os.Environ(), "SAMBA_DIR="+dcDir, "SAMBA_ADDR="+doctorDCAddr)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "samba-ad.sh %s: %s", verb, out)
	}
	t.Cleanup(func() {
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "test", "fixtures", "samba-ad.sh"), "teardown")
		cmd.Env = append(os.Environ(), "SAMBA_DIR="+dcDir)
		_ = cmd.Run()
	})
	samba("setup")

	// An enrolled agent's state: only the sealing key matters here.
	state := filepath.Join(parent, "state")
	require.NoError(t, os.MkdirAll(state, 0o700))
	key, err := seal.GenerateKey()
	require.NoError(t, err)
	for name, body := range map[string][]byte{
		"agent.json": []byte(`{"server_url":"https://deskrun.test","machine_id":"m_1","name":"doctor-test"}`),
		"ca.crt":     []byte("-"), "signing.key": make([]byte, 32), "seal.key": key.Private,
	} {
		require.NoError(t, os.WriteFile(filepath.Join(state, name), body, 0o600))
	}
	cfg := filepath.Join(parent, "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, `directory:
  url: ldaps://%s
  ca_file: %s
  domain: test.example
  service_user: dr_svc@test.example
`, doctorDCAddr, filepath.Join(dcDir, "tls", "ca.pem")), 0o600))
	r := deskrun(t, nil, "Passw0rd!1\n", "agent", "directory", "set-service-password", "--state-dir", state, "--config", cfg, "--password-stdin")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	b, err := os.ReadFile(cfg)
	require.NoError(t, err)
	require.NotContains(t, string(b), "Passw0rd!1")

	none := filepath.Join(parent, "none")
	doctor := func() map[string]string {
		t.Helper()
		r := deskrun(t, nil, "", "doctor", "--json", "--timeout", "2s", "--directory-config", cfg, "--state-dir", state,
			"--sssd-conf", none, "--krb5-conf", none, "--smb-conf", none)
		var out struct {
			Checks []struct{ Name, Status, Detail, Fix string }
		}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), r.stdout+r.stderr)
		got := map[string]string{}
		for _, c := range out.Checks {
			got[c.Name] = c.Status + ": " + c.Detail + " | fix: " + c.Fix
		}
		return got
	}
	reachable := func(got map[string]string) {
		t.Helper()
		require.Regexp(t, `^pass: ldaps://127.0.0.4, domain test.example`, got["directory"])
		for _, port := range []string{"88", "389", "636"} {
			require.Regexp(t, `^pass: reachable`, got["tcp "+doctorDCAddr+":"+port])
		}
		require.Regexp(t, `^pass: LDAPS 127.0.0.4:636, certificate verified`, got["directory ldap"])
		require.Regexp(t, `^pass: .* against the DC 127.0.0.4:636 \(LDAP currentTime`, got["clock skew"])
		require.Regexp(t, `^pass: dr_svc@test.example binds and reads userAccountControl, msDS-User-Account-Control-Computed, badPwdCount`, got["directory service account"])
		require.Regexp(t, `^warn: _ldap._tcp.test.example: no record`, got["dns srv ldap"])
	}
	got := doctor()
	t.Logf("%v", got)
	reachable(got)

	samba("stop")
	got = doctor()
	require.Regexp(t, `^fail: .*connection refused \| fix: start the DC`, got["tcp 127.0.0.4:636"])
	require.Regexp(t, `^fail: NoLogonServers: .*127.0.0.4:636.* \| fix: Check the machine's link to the domain`, got["directory ldap"])
	require.NotContains(t, got, "directory service account")

	samba("start")
	reachable(doctor())

	// A wrong sealed password is the service account's failure, not the DC's.
	require.NoError(t, os.WriteFile(filepath.Join(state, "seal.key"), mustKey(t), 0o600))
	got = doctor()
	require.Regexp(t, `^fail: the sealed password does not open: .*set-service-password`, got["directory service account"])
}

func mustKey(t *testing.T) []byte {
	k, err := seal.GenerateKey()
	require.NoError(t, err)
	return k.Private
}
