package desktopflow

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/deskrun/deskrun"
)

// The manifest is decoded from goccy/go-yaml's AST rather than with
// yaml.Unmarshal: the decoder then knows, for every value, the field path
// ("inputs[1].default") and the line and column to name in an error, and it
// can refuse what Unmarshal would convert (name: 123 into a string).

// position is a place in the manifest, 1-based.
type position struct{ line, column int }

type decoder struct {
	path string
	root ast.Node
}

// entry is one key of a mapping and its value.
type entry struct {
	key, value ast.Node
}

// object is a decoded mapping: its node (for the position of a missing
// field) and its entries by key.
type object struct {
	node   ast.Node
	fields map[string]entry
}

func (o object) value(key string) (ast.Node, bool) {
	e, ok := o.fields[key]
	if !ok || isNull(e.value) {
		return nil, false
	}
	return e.value, true
}

func parseYAML(path string, data []byte) (*decoder, error) {
	d := &decoder{path: path}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye yaml.Error
		if errors.As(err, &ye) && ye.GetToken() != nil {
			p := ye.GetToken().Position
			return nil, d.errorAt(position{p.Line, p.Column}, "", "%s", ye.GetMessage())
		}
		return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowInvalid, Message: fmt.Sprintf("%s: not valid YAML: %v", path, err)}
	}
	var docs []ast.Node
	for _, doc := range f.Docs {
		if doc.Body != nil {
			if _, comment := doc.Body.(*ast.CommentGroupNode); !comment {
				docs = append(docs, doc.Body)
			}
		}
	}
	switch len(docs) {
	case 0:
		return nil, d.errorAt(position{1, 1}, "", "the manifest is empty: it needs at least name and run")
	case 1:
	default:
		return nil, d.errorf(docs[1], "", "the manifest holds %d YAML documents; write one", len(docs))
	}
	d.root = docs[0]
	var bad ast.Node
	ast.Walk(visitor(func(n ast.Node) bool {
		switch n.(type) {
		case *ast.AnchorNode, *ast.AliasNode, *ast.TagNode, *ast.MergeKeyNode:
			if bad == nil {
				bad = n
			}
			return false
		}
		return true
	}), d.root)
	if bad != nil {
		return nil, d.errorf(bad, "", "anchors, aliases, merge keys and tags are not allowed in a manifest (found %q)", bad.GetToken().Value)
	}
	return d, nil
}

type visitor func(ast.Node) bool

func (v visitor) Visit(n ast.Node) ast.Visitor {
	if v(n) {
		return v
	}
	return nil
}

func (d *decoder) pos(n ast.Node) position {
	if mn, ok := n.(*ast.MappingNode); ok && !mn.IsFlowStyle && len(mn.Values) > 0 {
		n = mn.Values[0].Key
	}
	if mv, ok := n.(*ast.MappingValueNode); ok {
		n = mv.Key
	}
	if n == nil || n.GetToken() == nil {
		return position{1, 1}
	}
	p := n.GetToken().Position
	return position{p.Line, p.Column}
}

// errorf makes the error of a field whose value is node.
func (d *decoder) errorf(n ast.Node, field, format string, args ...any) *deskrun.Error {
	return d.errorAt(d.pos(n), field, format, args...)
}

func (d *decoder) errorAt(p position, field, format string, args ...any) *deskrun.Error {
	msg := fmt.Sprintf(format, args...)
	if field != "" {
		msg = "field " + field + ": " + msg
	}
	return &deskrun.Error{Code: deskrun.CodeDesktopFlowInvalid, Field: field,
		Message: fmt.Sprintf("%s:%d:%d: %s", d.path, p.line, p.column, msg)}
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

// kind names a node's YAML type for an error message.
func kind(n ast.Node) string {
	switch n.(type) {
	case *ast.StringNode, *ast.LiteralNode:
		return "a string"
	case *ast.IntegerNode, *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
		return "a number"
	case *ast.BoolNode:
		return "a boolean"
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.NullNode, nil:
		return "null"
	}
	return n.Type().String()
}

func isNull(n ast.Node) bool {
	_, null := n.(*ast.NullNode)
	return n == nil || null
}

// mapping reads n as a mapping whose keys must be among allowed.
func (d *decoder) mapping(n ast.Node, field string, allowed ...string) (object, error) {
	var values []*ast.MappingValueNode
	switch n := n.(type) {
	case *ast.MappingNode:
		values = n.Values
	case *ast.MappingValueNode:
		values = []*ast.MappingValueNode{n}
	default:
		what := "the manifest"
		if field != "" {
			what = "field " + field
		}
		return object{}, d.errorf(n, field, "%s must be a mapping of %s, not %s", what, strings.Join(allowed, ", "), kind(n))
	}
	o := object{node: n, fields: make(map[string]entry, len(values))}
	for _, mv := range values {
		key, ok := mv.Key.(*ast.StringNode)
		if !ok {
			return object{}, d.errorf(mv.Key, field, "a key must be a plain name, not %s", kind(mv.Key))
		}
		if !slices.Contains(allowed, key.Value) {
			return object{}, d.errorf(key, join(field, key.Value), "unknown field %q; the fields here are %s", key.Value, strings.Join(allowed, ", "))
		}
		o.fields[key.Value] = entry{key: key, value: mv.Value}
	}
	return o, nil
}

// sequence reads n as a list.
func (d *decoder) sequence(n ast.Node, field string) ([]ast.Node, error) {
	s, ok := n.(*ast.SequenceNode)
	if !ok {
		return nil, d.errorf(n, field, "must be a list, not %s", kind(n))
	}
	return s.Values, nil
}

// str reads o[key] as a string; a missing or null value is "" unless
// required.
func (d *decoder) str(o object, field, key string, required bool) (string, error) {
	n, ok := o.value(key)
	if !ok {
		if required {
			return "", d.errorf(o.node, join(field, key), "missing required field %q", key)
		}
		return "", nil
	}
	v, err := d.typedScalar(n, join(field, key), TypeString)
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// boolean reads o[key] as true or false; missing is false.
func (d *decoder) boolean(o object, field, key string) (bool, error) {
	n, ok := o.value(key)
	if !ok {
		return false, nil
	}
	v, err := d.typedScalar(n, join(field, key), TypeBoolean)
	if err != nil {
		return false, err
	}
	return v.(bool), nil
}

// typedScalar reads a scalar of type t: a string, a float64 or a bool.
func (d *decoder) typedScalar(n ast.Node, field string, t Type) (any, error) {
	switch t {
	case TypeString:
		switch n := n.(type) {
		case *ast.StringNode:
			return n.Value, nil
		case *ast.LiteralNode:
			return n.Value.Value, nil
		}
		hint := ""
		if _, scalar := n.(ast.ScalarNode); scalar {
			hint = fmt.Sprintf(" (quote it: %q)", n.GetToken().Value)
		}
		return nil, d.errorf(n, field, "must be a string, not %s%s", kind(n), hint)
	case TypeNumber:
		var f float64
		switch n := n.(type) {
		case *ast.IntegerNode:
			switch v := n.Value.(type) {
			case int64:
				f = float64(v)
			case uint64:
				f = float64(v)
			}
			return f, nil
		case *ast.FloatNode:
			if !math.IsInf(n.Value, 0) && !math.IsNaN(n.Value) {
				return n.Value, nil
			}
		}
		return nil, d.errorf(n, field, "must be a number, not %s", kind(n))
	case TypeBoolean:
		if b, ok := n.(*ast.BoolNode); ok {
			return b.Value, nil
		}
		return nil, d.errorf(n, field, "must be a boolean (true or false), not %s", kind(n))
	}
	return nil, d.errorf(n, field, "unknown type %q", t)
}
