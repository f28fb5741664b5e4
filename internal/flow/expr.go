package flow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"github.com/robfig/cron/v3"
)

// Expressions are CEL. What an expression sees is declared as qualified
// variables, so the checker (at apply time) refuses a name that does not
// exist and knows each type:
//
//	trigger                  dyn: {kind, time, body, headers, hook, tick}
//	inputs.NAME              string, double or bool, as declared
//	steps.ID.status          string: succeeded, failed or skipped
//	steps.ID.outputs         map(string, dyn): a desktop run's outputs, or
//	                         {status, headers, body} of an http step
//	steps.ID.error           string: the step's error message ("" if none)
//	secrets                  map(string, string); only in an http step's
//	                         url and headers, never in outputs or bodies

// celEnv is the CEL environment of one place in a flow.
type celEnv struct{ env *cel.Env }

func newEnv(inputs map[string]string, before []Step, secrets bool) (*celEnv, error) {
	opts := []cel.EnvOption{cel.Variable("trigger", cel.DynType)}
	for name, typ := range inputs {
		t := cel.StringType
		switch typ {
		case "number":
			t = cel.DoubleType
		case "boolean":
			t = cel.BoolType
		}
		opts = append(opts, cel.Variable("inputs."+name, t))
	}
	for _, s := range before {
		opts = append(opts,
			cel.Variable("steps."+s.ID+".status", cel.StringType),
			cel.Variable("steps."+s.ID+".outputs", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("steps."+s.ID+".error", cel.StringType))
	}
	if secrets {
		opts = append(opts, cel.Variable("secrets", cel.MapType(cel.StringType, cel.StringType)))
	}
	env, err := cel.NewEnv(opts...)
	if err != nil {
		return nil, fmt.Errorf("cel environment: %w", err)
	}
	return &celEnv{env}, nil
}

func (e *celEnv) withSecrets() *celEnv {
	env, err := e.env.Extend(cel.Variable("secrets", cel.MapType(cel.StringType, cel.StringType)))
	if err != nil {
		return e
	}
	return &celEnv{env}
}

// Expr is a compiled, type-checked CEL expression.
type Expr struct {
	src string
	ast *cel.Ast
	prg cel.Program
}

// costLimit bounds one evaluation, so no expression runs away.
const costLimit = 1_000_000

func (e *celEnv) compile(src string) (*Expr, error) {
	a, iss := e.env.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("expression %q does not type-check: %s", src, strings.ReplaceAll(iss.Err().Error(), "\n", " "))
	}
	prg, err := e.env.Program(a, cel.CostLimit(costLimit))
	if err != nil {
		return nil, fmt.Errorf("expression %q: %w", src, err)
	}
	return &Expr{src: src, ast: a, prg: prg}, nil
}

func (x *Expr) isBool() bool {
	t := x.ast.OutputType()
	return t.IsExactType(cel.BoolType) || t.IsExactType(cel.DynType)
}

func (x *Expr) typeName() string { return x.ast.OutputType().String() }

// Eval evaluates the expression over vars (see Vars) and returns a plain Go
// value: string, float64, int64, bool, nil, []any or map[string]any.
func (x *Expr) Eval(ctx context.Context, vars map[string]any) (any, error) {
	v, _, err := x.prg.ContextEval(ctx, vars)
	if err != nil {
		return nil, fmt.Errorf("evaluate %q: %w", x.src, err)
	}
	return native(v)
}

// EvalBool evaluates a condition.
func (x *Expr) EvalBool(ctx context.Context, vars map[string]any) (bool, error) {
	v, err := x.Eval(ctx, vars)
	if err != nil {
		return false, err
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("condition %q gave a %T, not a bool", x.src, v)
	}
	return b, nil
}

func native(v ref.Val) (any, error) {
	switch v.Type() {
	case types.NullType:
		return nil, nil
	case types.StringType, types.BoolType, types.DoubleType, types.IntType, types.UintType, types.BytesType:
		return v.Value(), nil
	case types.TimestampType:
		return v.Value().(time.Time).UTC().Format(time.RFC3339Nano), nil
	case types.DurationType:
		return v.Value().(time.Duration).String(), nil
	}
	if l, ok := v.(traits.Lister); ok {
		out := []any{}
		for it := l.Iterator(); it.HasNext() == types.True; {
			e, err := native(it.Next())
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, nil
	}
	if m, ok := v.(traits.Mapper); ok {
		out := map[string]any{}
		for it := m.Iterator(); it.HasNext() == types.True; {
			k := it.Next()
			e, err := native(m.Get(k))
			if err != nil {
				return nil, err
			}
			out[fmt.Sprint(k.Value())] = e
		}
		return out, nil
	}
	if n, err := v.ConvertToNative(reflect.TypeFor[any]()); err == nil {
		return n, nil
	}
	return nil, fmt.Errorf("a CEL %s has no JSON form", v.Type().TypeName())
}

// Template is a string with ${{ expr }} parts.
type Template struct {
	parts []part
}

type part struct {
	lit  string
	expr *Expr
}

func (e *celEnv) template(src string) (*Template, error) {
	t := &Template{}
	rest := src
	for {
		i := strings.Index(rest, "${{")
		if i < 0 {
			if rest != "" {
				t.parts = append(t.parts, part{lit: rest})
			}
			return t, nil
		}
		j := strings.Index(rest[i:], "}}")
		if j < 0 {
			return nil, fmt.Errorf("%q opens ${{ without closing }}", src)
		}
		if i > 0 {
			t.parts = append(t.parts, part{lit: rest[:i]})
		}
		x, err := e.compile(strings.TrimSpace(rest[i+3 : i+j]))
		if err != nil {
			return nil, err
		}
		t.parts = append(t.parts, part{expr: x})
		rest = rest[i+j+2:]
	}
}

// Render evaluates the template. A template that is one ${{ expr }} and
// nothing else keeps the expression's type; otherwise the parts are joined
// into a string (non-strings as JSON).
func (t *Template) Render(ctx context.Context, vars map[string]any) (any, error) {
	if len(t.parts) == 1 && t.parts[0].expr != nil {
		return t.parts[0].expr.Eval(ctx, vars)
	}
	var b strings.Builder
	for _, p := range t.parts {
		if p.expr == nil {
			b.WriteString(p.lit)
			continue
		}
		v, err := p.expr.Eval(ctx, vars)
		if err != nil {
			return nil, err
		}
		b.WriteString(Stringify(v))
	}
	return b.String(), nil
}

// RenderString renders and stringifies.
func (t *Template) RenderString(ctx context.Context, vars map[string]any) (string, error) {
	v, err := t.Render(ctx, vars)
	if err != nil {
		return "", err
	}
	return Stringify(v), nil
}

// Stringify is a value's text: a string as is, anything else as JSON.
func Stringify(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return ""
	case float64:
		if x == float64(int64(x)) {
			return fmt.Sprint(int64(x))
		}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// StepState is what later expressions see of a finished step.
type StepState struct {
	Status  string         // succeeded, failed or skipped
	Outputs map[string]any // never nil
	Error   string
}

// Vars is the activation of an expression.
func Vars(trigger any, inputs map[string]any, steps map[string]StepState, secrets map[string]string) map[string]any {
	v := map[string]any{"trigger": trigger}
	for k, x := range inputs {
		v["inputs."+k] = x
	}
	for id, s := range steps {
		out := s.Outputs
		if out == nil {
			out = map[string]any{}
		}
		v["steps."+id+".status"] = s.Status
		v["steps."+id+".outputs"] = out
		v["steps."+id+".error"] = s.Error
	}
	if secrets != nil {
		v["secrets"] = secrets
	}
	return v
}

// DesktopInputs renders a desktop step's inputs as strings (what a desktop
// run takes; the desktop flow converts them to its declared types).
func (s *DesktopStep) RenderInputs(ctx context.Context, vars map[string]any) (map[string]string, error) {
	out := map[string]string{}
	for k, t := range s.inputs {
		v, err := t.RenderString(ctx, vars)
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// Request renders an http step: URL, headers and body.
func (h *HTTPStep) Request(ctx context.Context, vars map[string]any) (url string, headers map[string]string, body []byte, err error) {
	if url, err = h.url.RenderString(ctx, vars); err != nil {
		return "", nil, nil, fmt.Errorf("url: %w", err)
	}
	headers = map[string]string{}
	for k, t := range h.headers {
		if headers[k], err = t.RenderString(ctx, vars); err != nil {
			return "", nil, nil, fmt.Errorf("header %s: %w", k, err)
		}
	}
	// Secrets are for the URL and headers only: a body can be echoed back
	// into outputs and history.
	delete(vars, "secrets")
	switch {
	case h.body != nil:
		s, err := h.body.RenderString(ctx, vars)
		if err != nil {
			return "", nil, nil, fmt.Errorf("body: %w", err)
		}
		body = []byte(s)
	case h.json != nil:
		v, err := h.json.Eval(ctx, vars)
		if err != nil {
			return "", nil, nil, fmt.Errorf("json: %w", err)
		}
		if body, err = json.Marshal(v); err != nil {
			return "", nil, nil, fmt.Errorf("json: %w", err)
		}
		if _, ok := headers["Content-Type"]; !ok {
			headers["Content-Type"] = "application/json"
		}
	}
	return url, headers, body, nil
}

// UsesSecrets lists the secret names an http step's URL and headers name
// literally (secrets.NAME), for a check at run time.
func (h *HTTPStep) UsesSecrets() bool {
	return strings.Contains(h.URL, "secrets") || func() bool {
		for _, v := range h.Headers {
			if strings.Contains(v, "secrets") {
				return true
			}
		}
		return false
	}()
}

// RenderOutputs evaluates the flow's outputs.
func (d *Definition) RenderOutputs(ctx context.Context, vars map[string]any) (map[string]any, error) {
	out := map[string]any{}
	for k, t := range d.outputs {
		v, err := t.Render(ctx, vars)
		if err != nil {
			return nil, fmt.Errorf("output %s: %w", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// Schedule is a compiled 5-field cron in a time zone.
type Schedule struct {
	spec cron.Schedule
	loc  *time.Location
}

var errZone = errors.New("unknown time zone")

// ParseSchedule parses a 5-field cron string (minute hour day-of-month
// month day-of-week) and an IANA time zone ("" is UTC).
func ParseSchedule(spec, zone string) (*Schedule, error) {
	if n := len(strings.Fields(spec)); n != 5 || strings.HasPrefix(strings.TrimSpace(spec), "@") || strings.Contains(spec, "TZ=") {
		return nil, fmt.Errorf("cron %q is not a 5-field cron string (minute hour day-of-month month day-of-week), e.g. \"*/15 8-18 * * 1-5\"", spec)
	}
	sch, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("cron %q is not valid: %v", spec, err)
	}
	loc := time.UTC
	if zone != "" {
		// LoadLocation accepts "Local" and "", which depend on the server.
		if zone == "Local" {
			return nil, fmt.Errorf("%w %q: name an IANA zone such as Europe/Paris", errZone, zone)
		}
		if loc, err = time.LoadLocation(zone); err != nil {
			return nil, fmt.Errorf("%w %q: name an IANA zone such as Europe/Paris", errZone, zone)
		}
	}
	return &Schedule{spec: sch, loc: loc}, nil
}

// Next is the first tick strictly after t.
func (s *Schedule) Next(t time.Time) time.Time {
	return s.spec.Next(t.In(s.loc)).UTC()
}
