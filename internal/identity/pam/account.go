package pam

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// AccountState is what /etc/shadow and the faillock tally say about an
// account, for doctor. Reading them needs root.
type AccountState struct {
	Found              bool      `json:"found"`
	Locked             bool      `json:"locked"`      // "!" prefix: usermod -L
	NoPassword         bool      `json:"no_password"` // "*": no password can match
	MustChange         bool      `json:"must_change"` // last change 0: chage -d 0
	LastChange         time.Time `json:"last_change,omitzero"`
	PasswordExpires    time.Time `json:"password_expires,omitzero"` // last change + max age
	WarnDays           int       `json:"warn_days,omitempty"`
	AccountExpires     time.Time `json:"account_expires,omitzero"`
	Failures           int       `json:"failures"`
	FaillockLocked     bool      `json:"faillock_locked"`
	PasswordExpired    bool      `json:"password_expired"`
	AccountExpired     bool      `json:"account_expired"`
	DaysUntilPwdExpiry int       `json:"days_until_password_expiry,omitempty"`
}

// ReadAccountState reads user's shadow entry and faillock tally.
func ReadAccountState(s Stack, shadowFile, user string, now time.Time) (AccountState, error) {
	var st AccountState
	if shadowFile == "" {
		shadowFile = "/etc/shadow"
	}
	f, err := os.Open(shadowFile)
	if err != nil {
		return st, fmt.Errorf("read shadow: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	day := func(s string) (int, bool) {
		if s == "" {
			return 0, false
		}
		v, err := strconv.Atoi(s)
		return v, err == nil
	}
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 8 || fields[0] != user {
			continue
		}
		st.Found = true
		st.Locked = strings.HasPrefix(fields[1], "!")
		st.NoPassword = strings.TrimLeft(fields[1], "!") == "*"
		if lc, ok := day(fields[2]); ok {
			st.MustChange = lc == 0
			st.LastChange = time.Unix(int64(lc)*86400, 0).UTC()
			if maxd, ok := day(fields[4]); ok && maxd >= 0 && maxd < 99999 && lc > 0 {
				st.PasswordExpires = st.LastChange.AddDate(0, 0, maxd)
				st.PasswordExpired = !now.Before(st.PasswordExpires)
				st.DaysUntilPwdExpiry = int(st.PasswordExpires.Sub(now).Hours() / 24)
			}
		}
		st.WarnDays, _ = day(fields[5])
		if ex, ok := day(fields[7]); ok {
			st.AccountExpires = time.Unix(int64(ex)*86400, 0).UTC()
			st.AccountExpired = !now.Before(st.AccountExpires)
		}
		break
	}
	st.Failures, st.FaillockLocked = faillockState(s.FaillockDir, user, s.Deny, s.UnlockTime, now)
	return st, sc.Err()
}
