package identity

import (
	"bufio"
	"errors"
	"io/fs"
	"os"
	"strings"

	"github.com/deskrun/deskrun"
)

// HostPaths are the files join-state detection reads; tests point them at
// a temporary directory.
type HostPaths struct {
	SSSDConf string // /etc/sssd/sssd.conf
	Krb5Conf string // /etc/krb5.conf
	SmbConf  string // /etc/samba/smb.conf
}

// DefaultHostPaths are the standard Debian locations.
func DefaultHostPaths() HostPaths {
	return HostPaths{SSSDConf: "/etc/sssd/sssd.conf", Krb5Conf: "/etc/krb5.conf", SmbConf: "/etc/samba/smb.conf"}
}

// JoinInfo is what the machine's configuration says about its directory.
type JoinInfo struct {
	State     deskrun.JoinState `json:"state"`
	Domain    string            `json:"domain,omitempty"` // DNS domain, lower case: corp.example
	Realm     string            `json:"realm,omitempty"`  // Kerberos realm: CORP.EXAMPLE
	Workgroup string            `json:"workgroup,omitempty"`
	// Servers are the KDC / LDAP / AD servers named in the configuration
	// (host or host:port); empty means "found through DNS SRV records".
	Servers []string `json:"servers,omitempty"`
	// Sources are the files that decided, for doctor's output.
	Sources []string `json:"sources,omitempty"`
}

// DetectJoin reads SSSD, Samba and Kerberos configuration (never the
// network) and says how this machine resolves directory users. Missing
// files are normal (local-only); unreadable ones are reported.
func DetectJoin(p HostPaths) (JoinInfo, error) {
	info := JoinInfo{State: deskrun.JoinLocal}
	krb, err := readINI(p.Krb5Conf)
	if err != nil {
		return info, err
	}
	if r := krb.get("libdefaults", "default_realm"); r != "" {
		info.Realm = r
		info.Domain = strings.ToLower(r)
		info.Sources = append(info.Sources, p.Krb5Conf)
		for _, k := range krb.getAll("realms."+r, "kdc") {
			info.Servers = appendNew(info.Servers, k)
		}
		info.State = deskrun.JoinRealm
	}
	smb, err := readINI(p.SmbConf)
	if err != nil {
		return info, err
	}
	if sec := strings.ToLower(smb.get("global", "security")); sec == "ads" || sec == "domain" {
		info.State = deskrun.JoinWinbind
		info.Workgroup = smb.get("global", "workgroup")
		if r := smb.get("global", "realm"); r != "" {
			info.Realm = strings.ToUpper(r)
			info.Domain = strings.ToLower(r)
		}
		for _, s := range strings.Fields(strings.ReplaceAll(smb.get("global", "password server"), ",", " ")) {
			if s != "*" {
				info.Servers = appendNew(info.Servers, s)
			}
		}
		info.Sources = append(info.Sources, p.SmbConf)
	}
	sssd, err := readINI(p.SSSDConf)
	if err != nil {
		return info, err
	}
	if doms := sssd.get("sssd", "domains"); doms != "" {
		d := strings.TrimSpace(strings.Split(doms, ",")[0])
		sec := "domain/" + d
		info.State = deskrun.JoinSSSD
		info.Domain = strings.ToLower(d)
		if ad := sssd.get(sec, "ad_domain"); ad != "" {
			info.Domain = strings.ToLower(ad)
		}
		if r := sssd.get(sec, "krb5_realm"); r != "" {
			info.Realm = r
		} else if info.Realm == "" {
			info.Realm = strings.ToUpper(info.Domain)
		}
		for _, k := range []string{"ad_server", "krb5_server", "ipa_server", "ldap_uri"} {
			for _, s := range strings.Split(sssd.get(sec, k), ",") {
				s = strings.TrimSpace(s)
				s = strings.TrimPrefix(strings.TrimPrefix(s, "ldaps://"), "ldap://")
				if s != "" && s != "_srv_" {
					info.Servers = appendNew(info.Servers, s)
				}
			}
		}
		info.Sources = append(info.Sources, p.SSSDConf)
	}
	return info, nil
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// ini is a forgiving reader for the three formats above: [section] headers,
// key = value lines, '#'/';' comments, and krb5.conf's nested
// "REALM = { kdc = host }" blocks, flattened to section "realms.REALM".
type ini map[string]map[string][]string

func (f ini) get(sec, key string) string {
	if v := f[strings.ToLower(sec)][strings.ToLower(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (f ini) getAll(sec, key string) []string { return f[strings.ToLower(sec)][strings.ToLower(key)] }

func readINI(path string) (ini, error) {
	f := ini{}
	if path == "" {
		return f, nil
	}
	fh, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return f, nil
		}
		return f, err
	}
	defer fh.Close()
	sec, sub := "", ""
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' && strings.HasSuffix(line, "]") {
			sec, sub = strings.ToLower(strings.TrimSpace(line[1:len(line)-1])), ""
			continue
		}
		if line == "}" {
			sub = ""
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if v == "{" {
			sub = k
			continue
		}
		s := sec
		if sub != "" {
			s = sec + "." + strings.ToLower(sub)
		}
		if f[s] == nil {
			f[s] = map[string][]string{}
		}
		lk := strings.ToLower(k)
		f[s][lk] = append(f[s][lk], v)
	}
	return f, sc.Err()
}
