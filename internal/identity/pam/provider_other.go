//go:build !linux || !cgo

package pam

import (
	"context"

	"github.com/deskrun/deskrun/internal/identity"
)

// Provider is the stub of builds without Linux-PAM (another OS, or
// CGO_ENABLED=0): every call fails with LogonProviderUnavailable.
type Provider struct{ cfg Config }

// New returns the stub provider.
func New(cfg Config) *Provider { return &Provider{cfg: cfg.withDefaults()} }

// Available reports false: this build has no PAM.
func Available() bool { return false }

func (p *Provider) unavailable() error {
	return identity.Machine(p.cfg.Machine).Fail(identity.ReasonProviderUnavailable, nil)
}

func (p *Provider) Logon(context.Context, identity.Request) (*identity.Result, error) {
	return nil, p.unavailable()
}

func (p *Provider) CheckAccount(context.Context, identity.Name, identity.LogonType) (*identity.Result, error) {
	return nil, p.unavailable()
}

func (p *Provider) OpenSession(context.Context, identity.Request) (identity.Session, error) {
	return nil, p.unavailable()
}
