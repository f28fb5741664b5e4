// Package sssdtest holds the end-to-end tests of domain users on Linux:
// a real Samba AD DC (test/fixtures/samba-ad.sh), SSSD as its NSS and PAM
// client (test/fixtures/sssd.sh), deskrun's PAM services with pam_sss, and
// the LDAP provider as the directory that explains pam_sss's refusals.
// The tests need root and change /etc/nsswitch.conf and /etc/sssd for
// their duration; they skip off CI without root.
package sssdtest
