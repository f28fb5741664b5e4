//go:build linux && cgo

package pam_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	msteinert "github.com/msteinert/pam/v2"

	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

// BenchmarkLogon compares a raw PAM logon (msteinert/pam directly:
// start, authenticate, acct_mgmt, end, in the same service) with the
// provider's Logon, which adds the name and password checks, the service
// file check, NSS lookups and, on failure, the mapping. It reports the
// median (p50-ms) next to Go's mean. Run as root:
//
//	go test ./internal/identity/pam -run '^$' -bench Logon -benchtime 200x
func BenchmarkLogon(b *testing.B) {
	needFixture(b)
	p := pam.New(pam.Config{Stack: fx.stack})
	svc := pam.ServiceName(identity.LogonInteractive)
	for _, c := range []struct {
		name, user, pw string
		fails          bool
	}{
		{"yescrypt", "drt_ok", password, false},
		{"sha512", "drt_sha512", password, false},
		{"yescrypt-wrong-password", "drt_wrongpw", "wrong-password", true},
		{"sha512-wrong-password", "drt_sha512", "wrong-password", true},
	} {
		tally := filepath.Join(fx.stack.FaillockDir, c.user)
		b.Run("raw/"+c.name, func(b *testing.B) {
			measure(b, tally, c.fails, func() error {
				conv := msteinert.ConversationFunc(func(s msteinert.Style, _ string) (string, error) {
					if s == msteinert.PromptEchoOff {
						return c.pw, nil
					}
					return "", nil
				})
				tx, err := msteinert.StartConfDir(svc, c.user, conv, fx.stack.PAMDir)
				if err != nil {
					return err
				}
				defer tx.End()
				if err := tx.Authenticate(msteinert.DisallowNullAuthtok); err != nil {
					return err
				}
				return tx.AcctMgmt(msteinert.DisallowNullAuthtok)
			})
		})
		b.Run("deskrun/"+c.name, func(b *testing.B) {
			name, _ := identity.ParseName(c.user)
			measure(b, tally, c.fails, func() error {
				pw := []byte(c.pw)
				_, err := p.Logon(context.Background(), identity.Request{Name: name, Password: pw, Type: identity.LogonInteractive})
				clear(pw)
				return err
			})
		})
	}
}

// measure runs f b.N times, times each call, and reports the median. A
// failing case resets the faillock tally between calls (untimed), or the
// account would lock and the benchmark would measure the lockout path.
func measure(b *testing.B, tally string, fails bool, f func() error) {
	b.Helper()
	d := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		if fails {
			b.StopTimer()
			os.Remove(tally)
			b.StartTimer()
		}
		t0 := time.Now()
		err := f()
		d = append(d, time.Since(t0))
		if (err != nil) != fails {
			b.Fatalf("unexpected result: %v", err)
		}
	}
	b.StopTimer()
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
}
