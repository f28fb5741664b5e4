package identity_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
)

func TestParseName(t *testing.T) {
	t.Parallel()
	ok := []struct {
		in     string
		kind   identity.NameKind
		domain string
		user   string
	}{
		{`alice`, identity.KindBare, "", "alice"},
		{`.\alice`, identity.KindLocal, ".", "alice"},
		{`CORP\alice`, identity.KindDomain, "CORP", "alice"},
		{`corp.example\alice`, identity.KindDomain, "corp.example", "alice"},
		{`alice@corp.example`, identity.KindUPN, "corp.example", "alice"},
		{`a.b-c_d$@x.y`, identity.KindUPN, "x.y", "a.b-c_d$"},
		{`élodie@exemple.fr`, identity.KindUPN, "exemple.fr", "élodie"},
		{strings.Repeat("u", 256), identity.KindBare, "", strings.Repeat("u", 256)},
	}
	for _, c := range ok {
		n, err := identity.ParseName(c.in)
		require.NoError(t, err, c.in)
		require.Equal(t, c.kind, n.Kind, c.in)
		require.Equal(t, c.domain, n.Domain, c.in)
		require.Equal(t, c.user, n.User, c.in)
		require.Equal(t, c.in, n.Raw)
	}
	bad := []string{
		"", `\alice`, `.\`, `CORP\`, `alice@`, `@corp`, `a\b\c`, `a@b@c`, `CORP\a@b`,
		"ali\nce", "alice\x00", "al\tice", "\x7f", "al ice", `a:b`, `a/b`, "-alice", "alice.",
		"alice@corp..example", "alice@.corp", "alice@corp.", "alice@-corp.x", `co rp\alice`,
		strings.Repeat("u", 257), "alice@" + strings.Repeat("d", 256), "\xff\xfe",
	}
	for _, in := range bad {
		_, err := identity.ParseName(in)
		require.Error(t, err, "%q", in)
		var de *deskrun.Error
		require.True(t, errors.As(err, &de))
		require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, de.Code)
		require.Equal(t, identity.ReasonUpnFormatInvalid, de.Reason)
		require.Equal(t, "0xC004844C", de.Status)
		require.EqualValues(t, -1073445812, de.StatusDecimal)
		require.Contains(t, de.Resolution, "user@domain")
		require.False(t, de.Definitive)
	}
}

func TestParseNameOnSaysExpectedForm(t *testing.T) {
	t.Parallel()
	_, err := identity.ParseNameOn("a@", deskrun.JoinLocal, "")
	var de *deskrun.Error
	require.ErrorAs(t, err, &de)
	require.Contains(t, de.Resolution, "not joined")
	_, err = identity.ParseNameOn("a@", deskrun.JoinSSSD, "corp.example")
	require.ErrorAs(t, err, &de)
	require.Contains(t, de.Resolution, `user@corp.example`)
	require.Contains(t, de.Resolution, `CORP\user`)
}

func TestNameLocalTo(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in    string
		local bool
	}{{`alice`, true}, {`.\alice`, true}, {`BUILD07\alice`, true}, {`build07\alice`, true}, {`CORP\alice`, false}, {`alice@build07`, false}} {
		n, err := identity.ParseName(c.in)
		require.NoError(t, err)
		require.Equal(t, c.local, n.LocalTo("build07.corp.example"), c.in)
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{`alice`, `.\alice`, `CORP\alice`, `alice@corp.example`, `a@`, `a\b\c`, "a\nb", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := identity.ParseName(s)
		if err != nil {
			var de *deskrun.Error
			if !errors.As(err, &de) || de.Reason != identity.ReasonUpnFormatInvalid {
				t.Fatalf("error is not UpnFormatInvalid: %v", err)
			}
			if s != "" && len(s) > 3 && strings.Contains(de.Error(), s) {
				t.Fatalf("error echoes the input")
			}
			return
		}
		if n.User == "" || len(n.User) > identity.MaxUserBytes || !utf8.ValidString(s) {
			t.Fatalf("accepted bad user part: %q", s)
		}
		for _, r := range s {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("accepted control character: %q", s)
			}
		}
		if strings.Count(s, `\`)+strings.Count(s, "@") > 1 {
			t.Fatalf("accepted two separators: %q", s)
		}
		again, err := identity.ParseName(n.String())
		if err != nil || again.Kind != n.Kind || again.User != n.User || again.Domain != n.Domain {
			t.Fatalf("round trip of %q: %+v -> %+v %v", s, n, again, err)
		}
	})
}
