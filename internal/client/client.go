// Package client is the typed client of deskrun's API, used by the CLI and
// the tests. Failed requests come back as *deskrun.Error rebuilt from the
// error envelope, so callers use errors.As and never match on text.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/wire"
)

// Config is the client's config file (~/.config/deskrun/config.yaml).
type Config struct {
	Server string `yaml:"server"`
	Token  string `yaml:"token"`
	// CAFile is the server's CA certificate (PEM); the client trusts only
	// it. Empty: the system roots.
	CAFile string `yaml:"ca_file,omitempty"`
}

// DefaultConfigPath is $DESKRUN_CONFIG, else $XDG_CONFIG_HOME/deskrun/config.yaml,
// else ~/.config/deskrun/config.yaml.
func DefaultConfigPath(getenv func(string) string) string {
	if p := getenv("DESKRUN_CONFIG"); p != "" {
		return p
	}
	if x := getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "deskrun", "config.yaml")
	}
	home := getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	return filepath.Join(home, ".config", "deskrun", "config.yaml")
}

// LoadConfig reads a client config; a missing file is an empty config.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := yaml.UnmarshalWithOptions(b, &c, yaml.Strict()); err != nil {
		return c, &deskrun.Error{Code: deskrun.CodeInvalid, Message: fmt.Sprintf("client config %s: %s", path, yaml.FormatError(err, false, true))}
	}
	return c, nil
}

// SaveConfig writes a client config (0600: it holds a token).
func SaveConfig(path string, c Config) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Client talks to one server.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// New makes a client. caPEM may be nil to use the system roots.
func New(server, token string, caPEM []byte) (*Client, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Message: fmt.Sprintf("server %q is not an https:// URL", server),
			Resolution: "Pass --server https://HOST:PORT, or run `deskrun dev`, which writes the client config."}
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute}
	if caPEM != nil {
		cfg, err := pki.PoolConfig(caPEM, u.Hostname())
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = cfg
	} else {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return &Client{base: strings.TrimRight(server, "/"), token: token, hc: &http.Client{Transport: tr}}, nil
}

// FromConfig makes a client from a config file's values.
func FromConfig(c Config) (*Client, error) {
	if c.Server == "" {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Message: "no server configured",
			Resolution: "Run `deskrun dev` (it writes ~/.config/deskrun/config.yaml), or pass --server and --token."}
	}
	var ca []byte
	if c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		ca = b
	}
	return New(c.Server, c.Token, ca)
}

// Do sends a request with a JSON body (nil for none) and decodes a JSON
// answer into out (nil to discard).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &deskrun.Error{Code: deskrun.CodeUnavailable, Message: fmt.Sprintf("cannot reach the server at %s: %v", c.base, err),
			Resolution: "Check that the server runs (`deskrun dev` or `deskrun server`) and that --server is right."}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return wire.DecodeError(resp.StatusCode, method+" "+path, b)
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}

// Machines lists machines.
func (c *Client) Machines(ctx context.Context) ([]wire.Machine, error) {
	var out wire.MachineList
	err := c.Do(ctx, http.MethodGet, "/api/v1/machines", nil, &out)
	return out.Machines, err
}

// Machine shows one machine by id or name.
func (c *Client) Machine(ctx context.Context, idOrName string) (*wire.Machine, error) {
	var out wire.Machine
	err := c.Do(ctx, http.MethodGet, "/api/v1/machines/"+url.PathEscape(idOrName), nil, &out)
	return &out, err
}

// DeleteMachine removes a machine.
func (c *Client) DeleteMachine(ctx context.Context, idOrName string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/machines/"+url.PathEscape(idOrName), nil, nil)
}

// CreateToken creates a token; the answer carries its secret.
func (c *Client) CreateToken(ctx context.Context, req wire.TokenCreate) (*wire.Token, error) {
	var out wire.Token
	err := c.Do(ctx, http.MethodPost, "/api/v1/tokens", req, &out)
	return &out, err
}

// CreateUser creates a console user.
func (c *Client) CreateUser(ctx context.Context, req wire.UserCreate) (*wire.User, error) {
	var out wire.User
	err := c.Do(ctx, http.MethodPost, "/api/v1/users", req, &out)
	return &out, err
}

// Tokens lists tokens of a kind ("" for all).
func (c *Client) Tokens(ctx context.Context, kind string) ([]wire.Token, error) {
	var out wire.TokenList
	p := "/api/v1/tokens"
	if kind != "" {
		p += "?kind=" + url.QueryEscape(kind)
	}
	err := c.Do(ctx, http.MethodGet, p, nil, &out)
	return out.Tokens, err
}

// RevokeToken revokes a token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// CreateJob creates a job; wait > 0 waits up to that long for it to end,
// in the same request.
func (c *Client) CreateJob(ctx context.Context, req wire.JobCreate, wait ...time.Duration) (*wire.Job, error) {
	var out wire.Job
	p := "/api/v1/jobs"
	if len(wait) > 0 && wait[0] > 0 {
		p += "?wait=" + wait[0].String()
	}
	err := c.Do(ctx, http.MethodPost, p, req, &out)
	return &out, err
}

// Job shows a job; wait > 0 waits up to that long for it to end.
func (c *Client) Job(ctx context.Context, id string, wait time.Duration) (*wire.Job, error) {
	var out wire.Job
	p := "/api/v1/jobs/" + url.PathEscape(id)
	if wait > 0 {
		p += "?wait=" + wait.String()
	}
	err := c.Do(ctx, http.MethodGet, p, nil, &out)
	return &out, err
}

// Jobs lists jobs.
func (c *Client) Jobs(ctx context.Context, machine, state string, limit int) ([]wire.Job, error) {
	q := url.Values{}
	if machine != "" {
		q.Set("machine", machine)
	}
	if state != "" {
		q.Set("state", state)
	}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var out wire.JobList
	err := c.Do(ctx, http.MethodGet, "/api/v1/jobs?"+q.Encode(), nil, &out)
	return out.Jobs, err
}

// CancelJob cancels a job.
func (c *Client) CancelJob(ctx context.Context, id string) (*wire.Job, error) {
	var out wire.Job
	err := c.Do(ctx, http.MethodPost, "/api/v1/jobs/"+url.PathEscape(id)+"/cancel", nil, &out)
	return &out, err
}

// CreateConnection creates (and tests) a connection.
func (c *Client) CreateConnection(ctx context.Context, req wire.ConnectionCreate) (*wire.ConnectionTestResult, error) {
	var out wire.ConnectionTestResult
	err := c.Do(ctx, http.MethodPost, "/api/v1/connections", req, &out)
	return &out, err
}

// Connections lists connections.
func (c *Client) Connections(ctx context.Context) ([]wire.Connection, error) {
	var out wire.ConnectionList
	err := c.Do(ctx, http.MethodGet, "/api/v1/connections", nil, &out)
	return out.Connections, err
}

// Connection shows one connection by name or id.
func (c *Client) Connection(ctx context.Context, name string) (*wire.Connection, error) {
	var out wire.Connection
	err := c.Do(ctx, http.MethodGet, "/api/v1/connections/"+url.PathEscape(name), nil, &out)
	return &out, err
}

// UpdateConnection changes a connection; new credentials are tested first.
func (c *Client) UpdateConnection(ctx context.Context, name string, req wire.ConnectionUpdate) (*wire.ConnectionTestResult, error) {
	var out wire.ConnectionTestResult
	err := c.Do(ctx, http.MethodPatch, "/api/v1/connections/"+url.PathEscape(name), req, &out)
	return &out, err
}

// DeleteConnection removes a connection.
func (c *Client) DeleteConnection(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/connections/"+url.PathEscape(name), nil, nil)
}

// TestConnection tests a connection's logon on its machine.
func (c *Client) TestConnection(ctx context.Context, name string, force bool) (*wire.ConnectionTestResult, error) {
	var out wire.ConnectionTestResult
	err := c.Do(ctx, http.MethodPost, "/api/v1/connections/"+url.PathEscape(name)+"/test", wire.ConnectionTest{Force: force}, &out)
	return &out, err
}

// Audit lists audit events.
func (c *Client) Audit(ctx context.Context, connection, action string, limit int) ([]wire.AuditEvent, error) {
	q := url.Values{}
	if connection != "" {
		q.Set("connection", connection)
	}
	if action != "" {
		q.Set("action", action)
	}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var out wire.AuditList
	err := c.Do(ctx, http.MethodGet, "/api/v1/audit?"+q.Encode(), nil, &out)
	return out.Events, err
}

// Stream GETs path and returns the body for the caller to read and close
// (log follows, screenshots); an error status comes back as *deskrun.Error.
func (c *Client) Stream(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &deskrun.Error{Code: deskrun.CodeUnavailable, Message: fmt.Sprintf("cannot reach the server at %s: %v", c.base, err)}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, wire.DecodeError(resp.StatusCode, "GET "+path, b)
	}
	return resp.Body, nil
}

// PushDesktopFlow uploads a package made by desktopflow.Pack. created is
// false when the package is the flow's latest version already (nothing
// new was stored).
func (c *Client) PushDesktopFlow(ctx context.Context, archive []byte) (flow *wire.DesktopFlow, created bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v1/desktopflows", bytes.NewReader(archive))
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Content-Type", "application/gzip")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, false, &deskrun.Error{Code: deskrun.CodeUnavailable, Message: fmt.Sprintf("cannot reach the server at %s: %v", c.base, err),
			Resolution: "Check that the server runs (`deskrun dev` or `deskrun server`) and that --server is right."}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, false, err
	}
	if resp.StatusCode >= 300 {
		return nil, false, wire.DecodeError(resp.StatusCode, "POST /api/v1/desktopflows", b)
	}
	var out wire.DesktopFlow
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, false, fmt.Errorf("decode answer of POST /api/v1/desktopflows: %w", err)
	}
	return &out, resp.StatusCode == http.StatusCreated, nil
}

// DesktopFlows lists the latest version of every desktop flow.
func (c *Client) DesktopFlows(ctx context.Context) ([]wire.DesktopFlow, error) {
	var out wire.DesktopFlowList
	err := c.Do(ctx, http.MethodGet, "/api/v1/desktopflows", nil, &out)
	return out.DesktopFlows, err
}

// DesktopFlow shows a desktop flow: its latest version and its versions.
func (c *Client) DesktopFlow(ctx context.Context, name string) (*wire.DesktopFlowDetail, error) {
	var out wire.DesktopFlowDetail
	err := c.Do(ctx, http.MethodGet, "/api/v1/desktopflows/"+url.PathEscape(name), nil, &out)
	return &out, err
}

// DesktopFlowVersion shows one version of a desktop flow.
func (c *Client) DesktopFlowVersion(ctx context.Context, name string, version int) (*wire.DesktopFlow, error) {
	var out wire.DesktopFlow
	err := c.Do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/desktopflows/%s/versions/%d", url.PathEscape(name), version), nil, &out)
	return &out, err
}

// DeleteDesktopFlow deletes every version of a desktop flow.
func (c *Client) DeleteDesktopFlow(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/desktopflows/"+url.PathEscape(name), nil, nil)
}

// UpdateMachine changes a machine's policy.
func (c *Client) UpdateMachine(ctx context.Context, idOrName string, req wire.MachineUpdate) (*wire.Machine, error) {
	var out wire.Machine
	err := c.Do(ctx, http.MethodPatch, "/api/v1/machines/"+url.PathEscape(idOrName), req, &out)
	return &out, err
}
