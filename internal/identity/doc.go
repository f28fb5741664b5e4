// Package identity is how deskrun names a user and explains why a logon
// failed: username parsing (DOMAIN\user, user@domain, .\user, user), the
// logon types, the Provider interface that PAM and LDAP implement, and the
// failure catalog — one table that maps every reason to its NTSTATUS, Win32
// error, AD data code, PAM results, message and resolution.
//
// It imports only the standard library and the deskrun vocabulary, so the
// server, the agent and the CLI can all use the catalog.
package identity
