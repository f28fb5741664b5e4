package sqlite

import (
	"context"
	"strings"

	"github.com/deskrun/deskrun/internal/store"
)

// queryAll runs a query and scans every row with scan. Its errors are the
// driver's (or scan's): the caller interprets them with its subject.
func queryAll[T any](ctx context.Context, q execer, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		x, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// filter builds the WHERE clause of a list query from the fields of a
// store filter that are set.
type filter struct {
	conds []string
	args  []any
}

// eq adds column = value unless value is empty.
func (f *filter) eq(column, value string) {
	if value != "" {
		f.conds = append(f.conds, column+" = ?")
		f.args = append(f.args, value)
	}
}

// in adds column IN (values) unless values is empty.
func in[S ~string](f *filter, column string, values []S) {
	if len(values) == 0 {
		return
	}
	f.conds = append(f.conds, column+" IN (?"+strings.Repeat(", ?", len(values)-1)+")")
	for _, v := range values {
		f.args = append(f.args, string(v))
	}
}

// query is selectFrom, the WHERE clause, then orderBy and a LIMIT of limit
// (0 or less: store.DefaultJobLimit); it returns the query and its args.
func (f *filter) query(selectFrom, orderBy string, limit int) (string, []any) {
	query := selectFrom
	if len(f.conds) > 0 {
		query += ` WHERE ` + strings.Join(f.conds, " AND ")
	}
	return query + ` ORDER BY ` + orderBy + ` LIMIT ?`, append(f.args, limitOr(limit, store.DefaultJobLimit))
}

func limitOr(limit, def int) int {
	if limit <= 0 {
		return def
	}
	return limit
}
