package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/deskrun/deskrun"
)

// subject names the row a statement was about, for the messages of the
// errors interpretError makes.
type subject struct {
	op   string // short context for driver errors: "create machine"
	kind string // "machine", "token", "job"
	id   string
	name string // the machine name, when the row is looked up or unique by name
	// ref names the row a foreign key points to: `machine "m_…"`.
	ref string
}

// interpretError turns a driver error into a domain error: a missing row
// is CodeNotFound, a unique violation CodeConflict, a dangling foreign key
// CodeNotFound for the row it points to. Anything else is wrapped with
// s.op and stays internal.
func interpretError(err error, s subject) error {
	if err == nil {
		return nil
	}
	var de *deskrun.Error
	if errors.As(err, &de) {
		return err
	}
	if errors.Is(err, sql.ErrNoRows) {
		if s.id == "" && s.name != "" {
			return deskrun.Errorf(deskrun.CodeNotFound, "%s named %q not found", s.kind, s.name)
		}
		return deskrun.Errorf(deskrun.CodeNotFound, "%s %q not found", s.kind, s.id)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			// The message ends "UNIQUE constraint failed: machines.name".
			column := se.Error()[strings.LastIndexByte(se.Error(), '.')+1:]
			column, _, _ = strings.Cut(column, " ")
			switch column {
			case "name":
				return deskrun.Errorf(deskrun.CodeConflict, "%s %s named %q already exists", article(s.kind), s.kind, s.name)
			case "id":
				return deskrun.Errorf(deskrun.CodeConflict, "%s %s with id %q already exists", article(s.kind), s.kind, s.id)
			}
			return deskrun.Errorf(deskrun.CodeConflict, "%s %s with this %s already exists", article(s.kind), s.kind, column)
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			if s.ref != "" {
				return deskrun.Errorf(deskrun.CodeNotFound, "%s not found", s.ref)
			}
		}
	}
	return fmt.Errorf("%s: %w", s.op, err)
}

// article is "an" before a kind that starts with a vowel ("an audit
// event"), "a" otherwise.
func article(kind string) string {
	if kind != "" && strings.ContainsRune("aeiou", rune(kind[0])) {
		return "an"
	}
	return "a"
}
