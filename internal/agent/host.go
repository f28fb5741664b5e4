package agent

import (
	"os"
	"runtime"
	"strings"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
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

// JoinState says how this machine resolves users, read by the identity
// package from sssd.conf, smb.conf and krb5.conf.
func JoinState(f HostFiles) (deskrun.JoinState, string) {
	info, _ := identity.DetectJoin(identity.HostPaths{SSSDConf: f.SSSD, Krb5Conf: f.KRB5, SmbConf: f.SMB})
	return info.State, info.Domain
}
