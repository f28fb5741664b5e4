package agent

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/ldap"
	"github.com/deskrun/deskrun/internal/seal"
)

// DefaultConfigFile is the agent's configuration file; its directory
// section is DirectoryConfig.
const DefaultConfigFile = "/etc/deskrun/agent.yaml"

// DirectorySealInfo binds a sealed service-account password to its use:
// a blob sealed for a connection's credential does not open as one.
const DirectorySealInfo = "deskrun directory service account v1"

// DirectoryConfig is the "directory:" section of agent.yaml: the domain
// the agent asks why a directory logon failed (the LDAP provider), with an
// optional read-only service account whose password is sealed to the
// agent's own key, so the file never holds it in clear:
//
//	directory:
//	  url: ldaps://dc1.corp.example
//	  ca_file: /etc/deskrun/corp-ca.pem
//	  domain: corp.example
//	  service_user: svc-deskrun@corp.example
//	  service_password_sealed: <deskrun agent directory set-service-password>
type DirectoryConfig struct {
	URL        string `yaml:"url" json:"url"`
	StartTLS   bool   `yaml:"start_tls,omitempty" json:"start_tls,omitempty"`
	CAFile     string `yaml:"ca_file,omitempty" json:"ca_file,omitempty"`
	ServerName string `yaml:"server_name,omitempty" json:"server_name,omitempty"`
	BaseDN     string `yaml:"base_dn,omitempty" json:"base_dn,omitempty"`
	Domain     string `yaml:"domain" json:"domain"`
	// Realm is the Kerberos realm (default Domain upper-cased); NetBIOS
	// the short domain of DOMAIN\user (default the first label of Domain).
	Realm   string `yaml:"realm,omitempty" json:"realm,omitempty"`
	NetBIOS string `yaml:"netbios,omitempty" json:"netbios,omitempty"`
	// ServiceDN (a DN) or ServiceUser (user@domain or DOMAIN\user): the
	// read-only service account; one of them, with its sealed password.
	ServiceDN             string `yaml:"service_dn,omitempty" json:"service_dn,omitempty"`
	ServiceUser           string `yaml:"service_user,omitempty" json:"service_user,omitempty"`
	ServicePasswordSealed string `yaml:"service_password_sealed,omitempty" json:"-"`
	WarnDays              int    `yaml:"warn_days,omitempty" json:"warn_days,omitempty"`
	// Timeout bounds each network step; default 10s.
	Timeout time.Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// ServiceAccount is the bind name of the service account ("" for none).
func (c *DirectoryConfig) ServiceAccount() string {
	if c.ServiceDN != "" {
		return c.ServiceDN
	}
	return c.ServiceUser
}

// LDAPConfig is the provider config, without the service password.
func (c *DirectoryConfig) LDAPConfig() ldap.Config {
	return ldap.Config{URL: c.URL, StartTLS: c.StartTLS, CAFile: c.CAFile, ServerName: c.ServerName,
		BaseDN: c.BaseDN, Domain: c.Domain, NetBIOS: c.NetBIOS, ServiceDN: c.ServiceAccount(),
		WarnDays: c.WarnDays, Timeout: c.Timeout}
}

// Validate reports what the provider could not use safely.
func (c *DirectoryConfig) Validate() error {
	if c.ServiceDN != "" && c.ServiceUser != "" {
		return errors.New("directory: service_dn and service_user name the same account; set one")
	}
	if c.ServicePasswordSealed != "" && c.ServiceAccount() == "" {
		return errors.New("directory: service_password_sealed without service_user or service_dn")
	}
	cfg := c.LDAPConfig()
	if c.ServicePasswordSealed != "" {
		cfg.ServicePassword = []byte{1} // checked here for presence only
	}
	if err := cfg.Validate(); err != nil {
		if c.ServiceAccount() != "" && c.ServicePasswordSealed == "" && strings.Contains(err.Error(), "go together") {
			return errors.New("directory: the service account has no password: run `deskrun agent directory set-service-password`")
		}
		return err
	}
	return nil
}

func configError(path string, err error) error {
	return &deskrun.Error{Code: deskrun.CodeInvalid, Field: "directory", Message: fmt.Sprintf("agent config %s: %s", path, err)}
}

// LoadDirectoryConfig reads the "directory:" section of an agent config
// file. The section is strict (an unknown or misspelled key is an error
// naming its line); other sections belong to other parts of the agent. A
// file without the section gives (nil, nil).
func LoadDirectoryConfig(path string) (*DirectoryConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, configError(path, err)
	}
	f, err := parser.ParseBytes(b, 0)
	if err != nil {
		return nil, configError(path, errors.New(yaml.FormatError(err, false, true)))
	}
	node, err := directoryNode(f)
	if err != nil || node == nil {
		return nil, err
	}
	var c DirectoryConfig
	if err := yaml.NodeToValue(node, &c, yaml.Strict()); err != nil {
		return nil, configError(path, errors.New(yaml.FormatError(err, false, true)))
	}
	if err := c.Validate(); err != nil {
		return nil, configError(path, err)
	}
	return &c, nil
}

// directoryNode is the value of the top-level "directory" key, or nil.
func directoryNode(f *ast.File) (ast.Node, error) {
	for _, doc := range f.Docs {
		m, ok := doc.Body.(*ast.MappingNode)
		if !ok {
			if mv, ok := doc.Body.(*ast.MappingValueNode); ok {
				m = &ast.MappingNode{Values: []*ast.MappingValueNode{mv}}
			} else if doc.Body != nil {
				return nil, errors.New("agent config: want a mapping at the top")
			} else {
				continue
			}
		}
		for _, v := range m.Values {
			if v.Key.String() == "directory" {
				return v.Value, nil
			}
		}
	}
	return nil, nil
}

// SetServicePassword seals pw to the agent's public key and writes it as
// the directory section's service_password_sealed, keeping the rest of
// the file (comments included). The file is rewritten atomically, 0600.
func SetServicePassword(path string, sealPublic, pw []byte) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return configError(path, err)
	}
	blob, err := seal.Seal(sealPublic, []byte(DirectorySealInfo), pw)
	if err != nil {
		return err
	}
	sealed := base64.StdEncoding.EncodeToString(blob)
	f, err := parser.ParseBytes(b, parser.ParseComments)
	if err != nil {
		return configError(path, errors.New(yaml.FormatError(err, false, true)))
	}
	node, err := directoryNode(f)
	if err != nil {
		return configError(path, err)
	}
	if node == nil {
		return configError(path, errors.New("no directory: section (add url, domain and service_user first)"))
	}
	var c DirectoryConfig
	if err := yaml.NodeToValue(node, &c, yaml.Strict()); err != nil {
		return configError(path, errors.New(yaml.FormatError(err, false, true)))
	}
	if c.ServiceAccount() == "" {
		return configError(path, errors.New("the directory section names no service_user or service_dn"))
	}
	p, _ := yaml.PathString("$.directory.service_password_sealed")
	if _, err := p.FilterFile(f); err == nil {
		err = p.ReplaceWithReader(f, strings.NewReader(sealed))
		if err != nil {
			return configError(path, err)
		}
	} else {
		dp, _ := yaml.PathString("$.directory")
		if err := dp.MergeFromReader(f, strings.NewReader("service_password_sealed: "+sealed+"\n")); err != nil {
			return configError(path, err)
		}
	}
	out := []byte(f.String())
	if !bytes.HasSuffix(out, []byte("\n")) {
		out = append(out, '\n')
	}
	// The result must load, with the sealed value in place.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	if got, err := LoadDirectoryConfig(tmp); err != nil || got == nil || got.ServicePasswordSealed != sealed {
		os.Remove(tmp)
		if err == nil {
			err = errors.New("the rewritten file lost the sealed password")
		}
		return configError(path, err)
	}
	return os.Rename(tmp, path)
}

// DirectoryProvider opens the sealed service password with the agent's
// private key (Identity.SealKey) and returns the LDAP provider of the
// directory. Without a service account the provider only binds as users.
// The provider owns the opened password for its lifetime.
func (c *DirectoryConfig) DirectoryProvider(sealKey []byte, machine string) (*ldap.Provider, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cfg := c.LDAPConfig()
	cfg.Machine = machine
	if c.ServicePasswordSealed != "" {
		blob, err := base64.StdEncoding.DecodeString(c.ServicePasswordSealed)
		if err != nil {
			return nil, fmt.Errorf("directory: service_password_sealed is not base64: %w", err)
		}
		pw, err := seal.Open(sealKey, []byte(DirectorySealInfo), blob)
		if err != nil {
			return nil, &deskrun.Error{Code: deskrun.CodeSealedCredentialInvalid, Field: "service_password_sealed",
				Message: "the directory service password was not sealed to this agent's key (enrolled again since?): run `deskrun agent directory set-service-password` again"}
		}
		cfg.ServicePassword = pw
	}
	return ldap.New(cfg), nil
}

// DiscoverDirectory builds a directory config from the machine's SSSD
// configuration (the first domain of [sssd] domains: ldap_uri or
// ad_server, ldap_search_base, ldap_tls_cacert, ldap_id_use_start_tls,
// krb5_realm, ad_domain, ldap_default_bind_dn) and krb5.conf's
// default_realm. Secrets are never copied: the service password must be
// sealed with set-service-password. No SSSD domain gives (nil, nil).
func DiscoverDirectory(p identity.HostPaths) (*DirectoryConfig, error) {
	sssd, err := readINI(p.SSSDConf)
	if err != nil {
		return nil, err
	}
	doms := sssd["sssd"]["domains"]
	if doms == "" {
		return nil, nil
	}
	name := strings.TrimSpace(strings.Split(doms, ",")[0])
	d := sssd["domain/"+strings.ToLower(name)]
	c := &DirectoryConfig{Domain: strings.ToLower(name)}
	if v := d["ad_domain"]; v != "" {
		c.Domain = strings.ToLower(v)
	}
	for _, u := range strings.Split(d["ldap_uri"], ",") {
		if u = strings.TrimSpace(u); u != "" && !strings.Contains(u, "_srv_") {
			c.URL = u
			break
		}
	}
	if c.URL == "" {
		for _, s := range strings.Split(d["ad_server"], ",") {
			if s = strings.TrimSpace(s); s != "" && s != "_srv_" {
				c.URL = "ldaps://" + s
				break
			}
		}
	}
	if c.URL == "" {
		c.URL = "ldaps://" + c.Domain // AD: the domain name resolves to its DCs
	}
	c.StartTLS = strings.HasPrefix(c.URL, "ldap://") || strings.EqualFold(d["ldap_id_use_start_tls"], "true")
	if strings.HasPrefix(c.URL, "ldaps://") {
		c.StartTLS = false
	}
	c.BaseDN = d["ldap_search_base"]
	c.CAFile = d["ldap_tls_cacert"]
	c.Realm = d["krb5_realm"]
	c.ServiceDN = d["ldap_default_bind_dn"]
	if c.Realm == "" {
		krb, err := readINI(p.Krb5Conf)
		if err != nil {
			return nil, err
		}
		c.Realm = krb["libdefaults"]["default_realm"]
	}
	return c, nil
}

// readINI reads [section] key = value files (sssd.conf, krb5.conf's
// top level), lower-casing sections and keys. A missing file is empty.
func readINI(path string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	if path == "" {
		return out, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	sec := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || l[0] == '#' || l[0] == ';':
		case l[0] == '[' && strings.HasSuffix(l, "]"):
			sec = strings.ToLower(strings.TrimSpace(l[1 : len(l)-1]))
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				continue
			}
			if out[sec] == nil {
				out[sec] = map[string]string{}
			}
			k = strings.ToLower(strings.TrimSpace(k))
			if _, dup := out[sec][k]; !dup {
				out[sec][k] = strings.TrimSpace(v)
			}
		}
	}
	return out, sc.Err()
}
