package agent

import (
	"bufio"
	"os"
	"runtime"
	"strings"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/wire"
)

// Version is the agent's version, set by the binary.
var Version = "dev"

// HostFiles are the files join-state detection reads; tests point them
// at fixtures.
type HostFiles struct {
	OSRelease string // /proc/sys/kernel/osrelease
	SSSD      string // /etc/sssd/sssd.conf
	SMB       string // /etc/samba/smb.conf
	KRB5      string // /etc/krb5.conf
}

// DefaultHostFiles are the real paths.
var DefaultHostFiles = HostFiles{
	OSRelease: "/proc/sys/kernel/osrelease",
	SSSD:      "/etc/sssd/sssd.conf",
	SMB:       "/etc/samba/smb.conf",
	KRB5:      "/etc/krb5.conf",
}

// HostInfo describes this machine for the server.
func HostInfo(f HostFiles, slots int) wire.MachineInfo {
	hn, _ := os.Hostname()
	kernel, _ := os.ReadFile(f.OSRelease)
	join, domain := JoinState(f)
	return wire.MachineInfo{
		Hostname: hn, OS: runtime.GOOS, Arch: runtime.GOARCH, Kernel: strings.TrimSpace(string(kernel)),
		AgentVersion: Version, ProtocolVersion: wire.ProtocolVersion,
		JoinState: string(join), Domain: domain, Slots: slots, RunAsAnyUser: os.Geteuid() == 0,
	}
}

// JoinState says how this machine resolves users: SSSD (a domains= line
// in sssd.conf), winbind (security = ads in smb.conf), realm (a
// default_realm in krb5.conf only), or local files.
func JoinState(f HostFiles) (deskrun.JoinState, string) {
	if v := iniValue(f.SSSD, "domains"); v != "" {
		return deskrun.JoinSSSD, strings.TrimSpace(strings.Split(v, ",")[0])
	}
	if strings.EqualFold(iniValue(f.SMB, "security"), "ads") {
		return deskrun.JoinWinbind, strings.ToLower(iniValue(f.SMB, "realm"))
	}
	if v := iniValue(f.KRB5, "default_realm"); v != "" {
		return deskrun.JoinRealm, strings.ToLower(v)
	}
	return deskrun.JoinLocal, ""
}

// iniValue returns the first "key = value" in an INI-like file.
func iniValue(path, key string) string {
	fh, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
