// Package server is the composition root of the control plane: it wires
// the store, the dispatcher, the control use cases, the API and the TLS
// listener from one Config. `deskrun server`, `deskrun dev` and the
// end-to-end tests all start a server through it.
package server

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/deskrun/deskrun"
)

// Config is everything a server needs. The YAML keys are also the
// environment names: data → DESKRUN_DATA, heartbeat_interval →
// DESKRUN_HEARTBEAT_INTERVAL.
type Config struct {
	// Listen is the TLS address of the API, the agents' endpoint and the
	// console. Plain HTTP on it is answered with a redirect, nothing else.
	Listen string `yaml:"listen"`
	// Data holds the TLS identity, the SQLite file and the bootstrap token.
	Data string `yaml:"data"`
	// Store is sqlite://PATH (default: sqlite://DATA/deskrun.db).
	Store string `yaml:"store"`
	// URL is the address clients and agents use; it goes into enrollment
	// tokens. Default: https://LISTEN.
	URL string `yaml:"url"`
	// Names are extra DNS names or IPs for the server certificate.
	Names []string `yaml:"names"`
	// HeartbeatInterval is how often agents send heartbeats; an agent
	// silent for three is offline.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// AgentLease is how long a disconnected agent's jobs wait for it.
	AgentLease time.Duration `yaml:"agent_lease"`
	// MaxBodyBytes bounds API request bodies.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// SQLiteSync is FULL (default, durable) or NORMAL.
	SQLiteSync string `yaml:"sqlite_sync"`

	// ConnectionTestTimeout bounds a test logon on a machine.
	ConnectionTestTimeout time.Duration `yaml:"connection_test_timeout"`
	// ExpiryWarnDays: a password expiring within this many days makes its
	// connection "expiring" and sends a notification.
	ExpiryWarnDays int `yaml:"expiry_warn_days"`
	// RetestInterval re-tests connections not tested for this long (0:
	// never); broken ones only with RetestBroken.
	RetestInterval time.Duration `yaml:"retest_interval"`
	RetestBroken   bool          `yaml:"retest_broken"`
	// NotifyURL receives connection.broken and connection.expiring events,
	// signed with HMAC-SHA256 over NotifySecret (X-Deskrun-Signature).
	NotifyURL    string `yaml:"notify_url"`
	NotifySecret string `yaml:"notify_secret"`

	// QueueTimeout: a run not placed within it fails with
	// NoCandidateMachine and the last placement reason.
	QueueTimeout time.Duration `yaml:"queue_timeout"`
	// MaxRunLogBytes bounds the output stored per run.
	MaxRunLogBytes int64 `yaml:"max_run_log_bytes"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:            "127.0.0.1:8443",
		Data:              ".deskrun",
		HeartbeatInterval: 10 * time.Second,
		AgentLease:        60 * time.Second,
		MaxBodyBytes:      1 << 20,
		LogLevel:          "info",
		SQLiteSync:        "FULL",

		ConnectionTestTimeout: 60 * time.Second,
		ExpiryWarnDays:        14,
		RetestInterval:        24 * time.Hour,
		QueueTimeout:          12 * time.Hour,
		MaxRunLogBytes:        64 << 20,
	}
}

// LoadFile merges a YAML config file into c. Unknown keys are an error
// that names them, so a typo is never silently ignored.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	if err := yaml.UnmarshalWithOptions(b, c, yaml.Strict()); err != nil {
		return &deskrun.Error{Code: deskrun.CodeInvalid, Message: fmt.Sprintf("config file %s: %s", path, yaml.FormatError(err, false, true))}
	}
	return nil
}

// LoadEnv merges DESKRUN_* variables into c.
func (c *Config) LoadEnv(getenv func(string) string) error {
	for _, key := range Keys() {
		s := getenv("DESKRUN_" + strings.ToUpper(key))
		if s == "" {
			continue
		}
		if err := c.Set(key, s); err != nil {
			return &deskrun.Error{Code: deskrun.CodeInvalid, Message: fmt.Sprintf("environment DESKRUN_%s: %v", strings.ToUpper(key), err)}
		}
	}
	return nil
}

// Keys lists the settings' names (the YAML keys).
func Keys() []string {
	t := reflect.TypeFor[Config]()
	keys := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		keys = append(keys, t.Field(i).Tag.Get("yaml"))
	}
	return keys
}

// Set sets one setting from its text form, parsed as YAML of the field's
// type (durations and lists included: "a,b" is a list), so flags, the
// environment and the file agree on syntax.
func (c *Config) Set(key, value string) error {
	f, ok := reflect.TypeFor[Config]().FieldByNameFunc(func(name string) bool {
		sf, _ := reflect.TypeFor[Config]().FieldByName(name)
		return sf.Tag.Get("yaml") == key
	})
	if !ok {
		return fmt.Errorf("no setting %q", key)
	}
	switch f.Type.Kind() {
	case reflect.Slice:
		if !strings.HasPrefix(value, "[") {
			value = "[" + value + "]"
		}
	case reflect.String:
		b, _ := yaml.Marshal(value) // quoted as needed: a URL, a path with ':' or '#'
		value = strings.TrimSpace(string(b))
	}
	if err := yaml.UnmarshalWithOptions(fmt.Appendf(nil, "%s: %s\n", key, value), c); err != nil {
		return errors.New(firstLine(err.Error()))
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Validate checks c and fills derived defaults.
func (c *Config) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen %q is not host:port", c.Listen)
	}
	if c.Data == "" {
		bad("data must name a directory")
	}
	if c.Store == "" {
		c.Store = "sqlite://" + filepath.Join(c.Data, "deskrun.db")
	}
	if !strings.HasPrefix(c.Store, "sqlite://") {
		bad("store %q: only sqlite://PATH is supported in this version", c.Store)
	}
	if c.URL == "" {
		c.URL = "https://" + c.Listen
	}
	if u, err := url.Parse(c.URL); err != nil || u.Scheme != "https" || u.Host == "" {
		bad("url %q must be an https:// URL", c.URL)
	}
	if c.HeartbeatInterval < 10*time.Millisecond {
		bad("heartbeat_interval %s is too short (minimum 10ms)", c.HeartbeatInterval)
	}
	if c.AgentLease < c.HeartbeatInterval {
		bad("agent_lease %s must be at least heartbeat_interval %s", c.AgentLease, c.HeartbeatInterval)
	}
	if c.MaxBodyBytes < 1024 {
		bad("max_body_bytes %d is too small (minimum 1024)", c.MaxBodyBytes)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level %q: use debug, info, warn or error", c.LogLevel)
	}
	switch strings.ToUpper(c.SQLiteSync) {
	case "FULL", "NORMAL":
	default:
		bad("sqlite_sync %q: use FULL or NORMAL", c.SQLiteSync)
	}
	if c.QueueTimeout <= 0 || c.MaxRunLogBytes < 1024 {
		bad("queue_timeout must be positive and max_run_log_bytes at least 1024")
	}
	if c.ConnectionTestTimeout < time.Second {
		bad("connection_test_timeout %s is too short (minimum 1s)", c.ConnectionTestTimeout)
	}
	if c.ExpiryWarnDays < 0 || c.RetestInterval < 0 {
		bad("expiry_warn_days and retest_interval cannot be negative")
	}
	if c.NotifyURL != "" {
		if u, err := url.Parse(c.NotifyURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("notify_url %q must be an http(s) URL", c.NotifyURL)
		}
		if len(c.NotifySecret) < 16 {
			bad("notify_secret must be set (at least 16 characters) when notify_url is")
		}
	}
	if len(errs) > 0 {
		return &deskrun.Error{Code: deskrun.CodeInvalid, Message: "invalid server configuration: " + errors.Join(errs...).Error()}
	}
	return nil
}

// StorePath is the SQLite file of a sqlite:// store URL.
func (c *Config) StorePath() string { return strings.TrimPrefix(c.Store, "sqlite://") }

// YAML renders c, for `deskrun server --print-config`.
func (c *Config) YAML() string {
	var b bytes.Buffer
	out, _ := yaml.Marshal(c)
	b.Write(out)
	return b.String()
}
