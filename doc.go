// Package deskrun is the vocabulary of deskrun: machines, tokens, jobs and
// the Error that crosses every boundary (store, API, agent protocol, CLI).
//
// It imports only the standard library. Adapters (store, api, web, pam,
// ldap) import it; it imports none of them. See docs/architecture.md.
package deskrun
