package ldap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Config is the agent's directory. Zero fields take their defaults
// (withDefaults); Validate says what is wrong with the rest.
type Config struct {
	// URL is ldaps://host[:636] or ldap://host[:389]; ldap:// needs
	// StartTLS. A simple bind sends the password, so the provider never
	// binds over a connection that is not TLS with a verified certificate.
	URL      string `yaml:"url" json:"url"`
	StartTLS bool   `yaml:"start_tls" json:"start_tls"`
	// CAFile or CAPEM hold the CA that signed the directory's certificate;
	// both empty means the system roots.
	CAFile string `yaml:"ca_file" json:"ca_file,omitempty"`
	CAPEM  []byte `yaml:"-" json:"-"`
	// ServerName is the name checked in the certificate; default the URL's host.
	ServerName string `yaml:"server_name" json:"server_name,omitempty"`
	// BaseDN is the domain's naming context (DC=corp,DC=example): where
	// accounts are searched and where the lockout policy is read.
	BaseDN string `yaml:"base_dn" json:"base_dn"`
	// Domain is the DNS domain (realm, any case): test.example. NetBIOS is
	// the short domain of DOMAIN\user (TEST); default the first label of
	// Domain, upper-cased.
	Domain  string `yaml:"domain" json:"domain"`
	NetBIOS string `yaml:"netbios" json:"netbios,omitempty"`
	// ServiceDN (a DN, a UPN or DOMAIN\user, as AD accepts) and
	// ServicePassword are an optional read-only account. With it the
	// provider reads the account's state before binding (lockout guard,
	// smart-card requirement, unknown users, password expiry) and finds
	// the DN of users in directories that bind DNs only. The agent keeps
	// the password sealed like any credential and owns the slice.
	ServiceDN       string `yaml:"service_dn" json:"service_dn,omitempty"`
	ServicePassword []byte `yaml:"-" json:"-"`
	// Timeout bounds each network step (dial, TLS, each LDAP request);
	// default 10 s.
	Timeout time.Duration `yaml:"timeout" json:"timeout,omitempty"`
	// WarnDays: a successful logon whose password expires within this many
	// days carries a PasswordExpiresSoon warning; default 14, negative
	// turns the warning off.
	WarnDays int `yaml:"warn_days" json:"warn_days,omitempty"`
	// Machine is copied into every error's Machine field.
	Machine string `yaml:"-" json:"-"`

	// Dial opens the TCP connection; default a net.Dialer. Tests use it to
	// simulate DNS failures.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error) `yaml:"-" json:"-"`
	// Now is the clock for expiry and the lockout window; default time.Now.
	Now func() time.Time `yaml:"-" json:"-"`
	// Logger; default slog.Default(). Never given a password.
	Logger *slog.Logger `yaml:"-" json:"-"`
}

// DefaultTimeout and DefaultWarnDays are the defaults of Config.
const (
	DefaultTimeout  = 10 * time.Second
	DefaultWarnDays = 14
)

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.WarnDays == 0 {
		c.WarnDays = DefaultWarnDays
	}
	if c.NetBIOS == "" && c.Domain != "" {
		c.NetBIOS = strings.ToUpper(strings.SplitN(c.Domain, ".", 2)[0])
	}
	if c.BaseDN == "" && c.Domain != "" {
		c.BaseDN = "DC=" + strings.Join(strings.Split(strings.ToLower(c.Domain), "."), ",DC=")
	}
	if c.Dial == nil {
		d := &net.Dialer{Timeout: c.Timeout}
		c.Dial = d.DialContext
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports a configuration the provider cannot use safely.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("directory url %q: want ldaps://host or ldap://host with start_tls", c.URL)
	}
	switch u.Scheme {
	case "ldaps":
		if c.StartTLS {
			return errors.New("directory: start_tls is for ldap:// URLs; ldaps:// is TLS already")
		}
	case "ldap":
		if !c.StartTLS {
			return errors.New("directory: ldap:// without start_tls would send passwords in clear; use ldaps:// or start_tls: true")
		}
	default:
		return fmt.Errorf("directory url scheme %q: want ldaps or ldap", u.Scheme)
	}
	if c.Domain == "" {
		return errors.New("directory: domain is required (the DNS domain, e.g. corp.example)")
	}
	if (c.ServiceDN == "") != (len(c.ServicePassword) == 0) {
		return errors.New("directory: service_dn and its password go together")
	}
	return nil
}

// addr is host:port of the URL, with the scheme's default port.
func (c Config) addr() (host, hostport string, ldaps bool) {
	u, _ := url.Parse(c.URL)
	host, port := u.Hostname(), u.Port()
	ldaps = u.Scheme == "ldaps"
	if port == "" {
		port = "389"
		if ldaps {
			port = "636"
		}
	}
	return host, net.JoinHostPort(host, port), ldaps
}

func (c Config) tlsConfig() (*tls.Config, error) {
	host, _, _ := c.addr()
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if c.ServerName != "" {
		tc.ServerName = c.ServerName
	}
	pem := c.CAPEM
	if len(pem) == 0 && c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read directory CA: %w", err)
		}
		pem = b
	}
	if len(pem) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("directory CA: no PEM certificate found")
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
