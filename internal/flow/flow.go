// Package flow is the definition of a cloud flow: the YAML a maker applies
// (`deskrun flow apply FILE`), its JSON Schema (published at
// /api/v1/schemas/flow.json), and the checks that run when it is applied
// rather than when it runs: step ids, references between steps, CEL
// expressions type-checked against what each step can see, cron strings and
// time zones. A Definition that Parse returns can be executed without
// further validation.
//
// Steps are an ordered list: a step sees the trigger, the inputs and the
// steps before it. A reference to a later step (which would be a cycle once
// steps could run in any order) or to an unknown one is refused.
package flow

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/deskrun/deskrun"
)

// Schema is the published JSON Schema of a flow definition.
//
//go:embed schema.json
var Schema []byte

// MaxDefinitionBytes bounds a definition.
const MaxDefinitionBytes = 256 << 10

// Definition is a parsed, checked flow.
type Definition struct {
	Name        string            `yaml:"name" json:"name"`
	Description string            `yaml:"description" json:"description,omitempty"`
	Inputs      []Input           `yaml:"inputs" json:"inputs,omitempty"`
	Triggers    Triggers          `yaml:"triggers" json:"triggers"`
	Concurrency *Concurrency      `yaml:"concurrency" json:"concurrency,omitempty"`
	Steps       []Step            `yaml:"steps" json:"steps"`
	Outputs     map[string]string `yaml:"outputs" json:"outputs,omitempty"`

	// Compiled expressions, filled by Parse.
	outputs  map[string]*Template
	schedule *Schedule
}

// Input is a declared input of the flow.
type Input struct {
	Name        string `yaml:"name" json:"name"`
	Type        string `yaml:"type" json:"type,omitempty"` // string (default), number, boolean
	Required    bool   `yaml:"required" json:"required,omitempty"`
	Default     any    `yaml:"default" json:"default,omitempty"`
	Description string `yaml:"description" json:"description,omitempty"`
}

// Triggers say what starts the flow besides a manual or API run, which is
// always possible.
type Triggers struct {
	Schedule *ScheduleTrigger `yaml:"schedule" json:"schedule,omitempty"`
	Webhook  *WebhookTrigger  `yaml:"webhook" json:"webhook,omitempty"`
}

// ScheduleTrigger runs the flow on a 5-field cron in a time zone.
type ScheduleTrigger struct {
	Cron     string         `yaml:"cron" json:"cron"`
	Timezone string         `yaml:"timezone" json:"timezone,omitempty"`
	Missed   string         `yaml:"missed" json:"missed,omitempty"` // skip (default) or run-once
	Inputs   map[string]any `yaml:"inputs" json:"inputs,omitempty"`
}

// Missed-tick policies.
const (
	MissedSkip    = "skip"
	MissedRunOnce = "run-once"
)

// WebhookTrigger runs the flow on POST /hooks/{ID} signed with the secret
// of that name in the server's secret store.
type WebhookTrigger struct {
	ID     string `yaml:"id" json:"id,omitempty"`
	Secret string `yaml:"secret" json:"secret"`
}

// Concurrency bounds the flow's runs in progress.
type Concurrency struct {
	Max     int    `yaml:"max" json:"max"`
	Overlap string `yaml:"overlap" json:"overlap,omitempty"` // queue (default) or skip
}

// Overlap policies.
const (
	OverlapQueue = "queue"
	OverlapSkip  = "skip"
)

// Step is one step: exactly one of Desktop and HTTP is set.
type Step struct {
	ID              string       `yaml:"id" json:"id"`
	If              string       `yaml:"if" json:"if,omitempty"`
	ContinueOnError bool         `yaml:"continue_on_error" json:"continue_on_error,omitempty"`
	Retry           *Retry       `yaml:"retry" json:"retry,omitempty"`
	Desktop         *DesktopStep `yaml:"desktop" json:"desktop,omitempty"`
	HTTP            *HTTPStep    `yaml:"http" json:"http,omitempty"`

	cond *Expr
}

// Kind is "desktop" or "http".
func (s *Step) Kind() string {
	if s.Desktop != nil {
		return "desktop"
	}
	return "http"
}

// Cond is the compiled `if`, or nil.
func (s *Step) Cond() *Expr { return s.cond }

// Retry retries a step that failed transiently.
type Retry struct {
	Max     int      `yaml:"max" json:"max"`
	Backoff Duration `yaml:"backoff" json:"backoff,omitempty"`
}

// DesktopStep runs a desktop flow through a connection and waits for it.
type DesktopStep struct {
	Flow       string         `yaml:"flow" json:"flow"`
	Version    int            `yaml:"version" json:"version,omitempty"`
	Connection string         `yaml:"connection" json:"connection"`
	Inputs     map[string]any `yaml:"inputs" json:"inputs,omitempty"`
	Priority   string         `yaml:"priority" json:"priority,omitempty"`
	Timeout    Duration       `yaml:"timeout" json:"timeout,omitempty"`

	inputs map[string]*Template
}

// HTTPStep sends one request.
type HTTPStep struct {
	Method       string            `yaml:"method" json:"method,omitempty"`
	URL          string            `yaml:"url" json:"url"`
	Headers      map[string]string `yaml:"headers" json:"headers,omitempty"`
	Body         string            `yaml:"body" json:"body,omitempty"`
	JSON         string            `yaml:"json" json:"json,omitempty"`
	ExpectStatus []int             `yaml:"expect_status" json:"expect_status,omitempty"`
	Idempotent   bool              `yaml:"idempotent" json:"idempotent,omitempty"`
	Timeout      Duration          `yaml:"timeout" json:"timeout,omitempty"`

	url     *Template
	headers map[string]*Template
	body    *Template
	json    *Expr
}

// Duration is a time.Duration written as "30s" in YAML and JSON.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// HookID is the id of the flow's webhook: its own, or the flow's name.
func (d *Definition) HookID() string {
	if d.Triggers.Webhook == nil {
		return ""
	}
	if d.Triggers.Webhook.ID != "" {
		return d.Triggers.Webhook.ID
	}
	return d.Name
}

// Schedule is the compiled schedule trigger, or nil.
func (d *Definition) Schedule() *Schedule { return d.schedule }

// Overlap is the concurrency overlap policy and limit (0: unlimited).
func (d *Definition) Limit() (max int, overlap string) {
	if d.Concurrency == nil {
		return 0, OverlapQueue
	}
	if d.Concurrency.Overlap == "" {
		return d.Concurrency.Max, OverlapQueue
	}
	return d.Concurrency.Max, d.Concurrency.Overlap
}

// compiledSchema is compiled at the first Parse, not at init: every
// deskrun process links this package, few of them parse a flow, and
// compiling costs a few milliseconds.
var compiledSchema = sync.OnceValue(func() *jsonschema.Schema {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(Schema))
	if err != nil {
		panic(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("flow.json", doc); err != nil {
		panic(err)
	}
	return c.MustCompile("flow.json")
})

// Parse reads, validates and compiles a definition. Every error is a
// *deskrun.Error with code FlowInvalid whose message names the file, line
// and column.
func Parse(file string, data []byte) (*Definition, error) {
	if len(data) > MaxDefinitionBytes {
		return nil, &deskrun.Error{Code: deskrun.CodeFlowInvalid, Message: fmt.Sprintf("%s: the definition is over %d bytes", file, MaxDefinitionBytes)}
	}
	p := &positions{file: file}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye yaml.Error
		if errors.As(err, &ye) && ye.GetToken() != nil {
			return nil, p.errAt(ye.GetToken().Position.Line, ye.GetToken().Position.Column, "", "%s", ye.GetMessage())
		}
		return nil, &deskrun.Error{Code: deskrun.CodeFlowInvalid, Message: fmt.Sprintf("%s: not valid YAML: %v", file, err)}
	}
	p.f = f
	var bad ast.Node
	for _, doc := range f.Docs {
		ast.Walk(visitor(func(n ast.Node) bool {
			switch n.(type) {
			case *ast.AnchorNode, *ast.AliasNode, *ast.TagNode, *ast.MergeKeyNode:
				if bad == nil {
					bad = n
				}
				return false
			}
			return true
		}), doc)
	}
	if bad != nil {
		pos := bad.GetToken().Position
		return nil, p.errAt(pos.Line, pos.Column, "", "anchors, aliases, merge keys and tags are not allowed (found %q)", bad.GetToken().Value)
	}
	if len(f.Docs) != 1 || f.Docs[0].Body == nil {
		return nil, p.errAt(1, 1, "", "the file must hold exactly one YAML document with name and steps")
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, p.errAt(1, 1, "", "%v", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		return nil, p.errAt(1, 1, "", "%v", err)
	}
	if err := compiledSchema().Validate(inst); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			return nil, p.schemaError(ve)
		}
		return nil, p.errAt(1, 1, "", "%v", err)
	}
	var d Definition
	if err := yaml.UnmarshalWithOptions(data, &d, yaml.UseJSONUnmarshaler()); err != nil {
		return nil, p.errAt(1, 1, "", "%v", err)
	}
	if err := d.check(p); err != nil {
		return nil, err
	}
	return &d, nil
}

// positions finds the line and column of a field path in the YAML.
type positions struct {
	file string
	f    *ast.File
}

func (p *positions) errAt(line, col int, field, format string, args ...any) *deskrun.Error {
	msg := fmt.Sprintf(format, args...)
	if field != "" {
		msg = field + ": " + msg
	}
	return &deskrun.Error{Code: deskrun.CodeFlowInvalid, Field: field, Message: fmt.Sprintf("%s:%d:%d: %s", p.file, line, col, msg)}
}

// at is the error of the field at path ("steps[1].http.url").
func (p *positions) at(field, format string, args ...any) *deskrun.Error {
	line, col := p.pos(field)
	return p.errAt(line, col, field, format, args...)
}

func (p *positions) pos(field string) (int, int) {
	if p.f == nil {
		return 1, 1
	}
	for path := field; path != ""; {
		yp, err := yaml.PathString("$." + path)
		if err == nil {
			if n, err := yp.FilterFile(p.f); err == nil && n != nil && n.GetToken() != nil {
				if mn, ok := n.(*ast.MappingNode); ok && len(mn.Values) > 0 && !mn.IsFlowStyle {
					n = mn.Values[0].Key
				}
				pos := n.GetToken().Position
				return pos.Line, pos.Column
			}
		}
		// Fall back to the parent field.
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			break
		}
		path = path[:i]
	}
	return 1, 1
}

// schemaError reports the first few leaf errors of a schema validation,
// the most specific (deepest) first.
func (p *positions) schemaError(ve *jsonschema.ValidationError) *deskrun.Error {
	type leaf struct{ field, msg string }
	var leaves []leaf
	seen := map[string]bool{}
	pr := message.NewPrinter(language.English)
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) > 0 {
			for _, c := range e.Causes {
				walk(c)
			}
			return
		}
		field := pointerToPath("/" + strings.Join(e.InstanceLocation, "/"))
		msg := friendly(field, e.ErrorKind.LocalizedString(pr))
		if !seen[field+msg] {
			seen[field+msg] = true
			leaves = append(leaves, leaf{field, msg})
		}
	}
	walk(ve)
	slices.SortStableFunc(leaves, func(a, b leaf) int { return len(b.field) - len(a.field) })
	e := p.at(leaves[0].field, "%s", leaves[0].msg)
	if len(leaves) > 1 {
		var more []string
		for _, l := range leaves[1:min(len(leaves), 4)] {
			line, col := p.pos(l.field)
			more = append(more, fmt.Sprintf("%d:%d: %s: %s", line, col, l.field, l.msg))
		}
		e.Message += "; also " + strings.Join(more, "; ")
	}
	return e
}

var stepIndex = regexp.MustCompile(`^steps\[\d+\]$`)

// friendly rewords the schema errors a maker meets most.
func friendly(field, msg string) string {
	if stepIndex.MatchString(field) && strings.Contains(msg, "additional properties") {
		return "unknown step type or field (" + strings.TrimPrefix(msg, "additional properties ") + "): a step is desktop or http"
	}
	if stepIndex.MatchString(field) && (strings.Contains(msg, "missing property") || strings.Contains(msg, "'not' failed")) {
		return "a step needs exactly one of desktop or http"
	}
	return msg
}

// pointerToPath turns "/steps/0/http" into "steps[0].http".
func pointerToPath(ptr string) string {
	var b strings.Builder
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		if tok == "" {
			continue
		}
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		if _, err := strconv.Atoi(tok); err == nil {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}

type visitor func(ast.Node) bool

func (v visitor) Visit(n ast.Node) ast.Visitor {
	if v(n) {
		return v
	}
	return nil
}

var stepRef = regexp.MustCompile(`\bsteps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)`)

// check runs the semantic checks and compiles every expression.
func (d *Definition) check(p *positions) error {
	inputs := map[string]string{}
	for i, in := range d.Inputs {
		field := fmt.Sprintf("inputs[%d]", i)
		if _, dup := inputs[in.Name]; dup {
			return p.at(field+".name", "input %q is declared twice", in.Name)
		}
		if in.Type == "" {
			d.Inputs[i].Type, in.Type = "string", "string"
		}
		inputs[in.Name] = in.Type
		if in.Default != nil {
			if _, err := in.Coerce(in.Default); err != nil {
				return p.at(field+".default", "%v", err)
			}
		}
	}
	if s := d.Triggers.Schedule; s != nil {
		sch, err := ParseSchedule(s.Cron, s.Timezone)
		if err != nil {
			field := "triggers.schedule.cron"
			if errors.Is(err, errZone) {
				field = "triggers.schedule.timezone"
			}
			return p.at(field, "%v", err)
		}
		d.schedule = sch
		if _, err := d.BindInputs(s.Inputs); err != nil {
			return p.at("triggers.schedule.inputs", "%s", err.(*deskrun.Error).Message)
		}
	}
	ids := map[string]int{}
	for i := range d.Steps {
		s := &d.Steps[i]
		field := fmt.Sprintf("steps[%d]", i)
		if j, dup := ids[s.ID]; dup {
			return p.at(field+".id", "step id %q is already used by steps[%d]", s.ID, j)
		}
		ids[s.ID] = i
	}
	known := map[string]bool{}
	for i := range d.Steps {
		s := &d.Steps[i]
		field := fmt.Sprintf("steps[%d]", i)
		env, err := newEnv(inputs, d.Steps[:i], false)
		if err != nil {
			return err
		}
		// refs reports a reference to a step this one cannot see, with a
		// clearer message than CEL's "undeclared reference".
		refs := func(f, src string) error {
			for _, m := range stepRef.FindAllStringSubmatch(src, -1) {
				id := m[1]
				if known[id] {
					continue
				}
				if j, ok := ids[id]; ok {
					if j == i {
						return p.at(f, "step %q refers to itself", id)
					}
					return p.at(f, "step %q refers to step %q, which runs after it (steps run in order; this would be a cycle)", s.ID, id)
				}
				return p.at(f, "no step has the id %q", id)
			}
			return nil
		}
		compile := func(f, src string) (*Expr, error) {
			if err := refs(f, src); err != nil {
				return nil, err
			}
			e, err := env.compile(src)
			if err != nil {
				return nil, p.at(f, "%v", err)
			}
			return e, nil
		}
		template := func(f, src string, secrets bool) (*Template, error) {
			if err := refs(f, src); err != nil {
				return nil, err
			}
			e := env
			if secrets {
				e = env.withSecrets()
			}
			t, err := e.template(src)
			if err != nil {
				return nil, p.at(f, "%v", err)
			}
			return t, nil
		}
		if s.If != "" {
			if s.cond, err = compile(field+".if", s.If); err != nil {
				return err
			}
			if !s.cond.isBool() {
				return p.at(field+".if", "the condition is a %s, not a bool", s.cond.typeName())
			}
		}
		if s.Retry != nil && s.Retry.Backoff == 0 {
			s.Retry.Backoff = Duration(time.Second)
		}
		switch {
		case s.Desktop != nil:
			ds := s.Desktop
			if ds.Priority == "" {
				ds.Priority = string(deskrun.PriorityNormal)
			}
			ds.inputs = map[string]*Template{}
			for k, v := range ds.Inputs {
				src, ok := v.(string)
				if !ok {
					b, _ := json.Marshal(v)
					src = string(b)
				}
				if ds.inputs[k], err = template(field+".desktop.inputs."+k, src, false); err != nil {
					return err
				}
			}
		case s.HTTP != nil:
			h := s.HTTP
			if h.Method == "" {
				h.Method = "GET"
				if h.Body != "" || h.JSON != "" {
					h.Method = "POST"
				}
			}
			if h.Body != "" && h.JSON != "" {
				return p.at(field+".http.json", "use body or json, not both")
			}
			if h.url, err = template(field+".http.url", h.URL, true); err != nil {
				return err
			}
			if !strings.Contains(h.URL, "${{") && !strings.HasPrefix(h.URL, "http://") && !strings.HasPrefix(h.URL, "https://") {
				return p.at(field+".http.url", "the URL %q must start with http:// or https://", h.URL)
			}
			h.headers = map[string]*Template{}
			for k, v := range h.Headers {
				if isSecretHeader(k) && !strings.Contains(v, "secrets.") {
					return p.at(field+".http.headers."+k, "header %s holds a literal value: keep secrets out of the definition and write ${{ secrets.NAME }} (deskrun secret set NAME --value-stdin)", k)
				}
				if h.headers[k], err = template(field+".http.headers."+k, v, true); err != nil {
					return err
				}
			}
			if h.Body != "" {
				if h.body, err = template(field+".http.body", h.Body, false); err != nil {
					return err
				}
			}
			if h.JSON != "" {
				if h.json, err = compile(field+".http.json", h.JSON); err != nil {
					return err
				}
			}
		}
		known[s.ID] = true
	}
	env, err := newEnv(inputs, d.Steps, false)
	if err != nil {
		return err
	}
	d.outputs = map[string]*Template{}
	for k, v := range d.Outputs {
		f := "outputs." + k
		for _, m := range stepRef.FindAllStringSubmatch(v, -1) {
			if !known[m[1]] {
				return p.at(f, "no step has the id %q", m[1])
			}
		}
		t, err := env.template(v)
		if err != nil {
			return p.at(f, "%v", err)
		}
		d.outputs[k] = t
	}
	return nil
}

func isSecretHeader(k string) bool {
	k = strings.ToLower(k)
	return k == "authorization" || k == "proxy-authorization" || k == "cookie" || strings.Contains(k, "api-key") || strings.Contains(k, "token") || strings.Contains(k, "secret")
}

// BindInputs checks given inputs against the declaration: undeclared,
// missing required and mistyped values are FlowInputInvalid. Strings are
// converted to the declared type ("3" for a number), so CLI --input k=v
// works; defaults fill what is missing.
func (d *Definition) BindInputs(given map[string]any) (map[string]any, error) {
	out := map[string]any{}
	decl := map[string]Input{}
	for _, in := range d.Inputs {
		decl[in.Name] = in
	}
	for k, v := range given {
		in, ok := decl[k]
		if !ok {
			return nil, &deskrun.Error{Code: deskrun.CodeFlowInputInvalid, Field: k, Message: fmt.Sprintf("flow %s has no input %q", d.Name, k)}
		}
		cv, err := in.Coerce(v)
		if err != nil {
			return nil, &deskrun.Error{Code: deskrun.CodeFlowInputInvalid, Field: k, Message: fmt.Sprintf("input %s: %v", k, err)}
		}
		out[k] = cv
	}
	for _, in := range d.Inputs {
		if _, ok := out[in.Name]; ok {
			continue
		}
		if in.Default != nil {
			out[in.Name], _ = in.Coerce(in.Default)
			continue
		}
		if in.Required {
			return nil, &deskrun.Error{Code: deskrun.CodeFlowInputInvalid, Field: in.Name, Message: fmt.Sprintf("flow %s needs the input %q", d.Name, in.Name)}
		}
		out[in.Name] = zero(in.Type)
	}
	return out, nil
}

func zero(typ string) any {
	switch typ {
	case "number":
		return 0.0
	case "boolean":
		return false
	}
	return ""
}

// Coerce converts v to the input's type; a string is parsed.
func (in Input) Coerce(v any) (any, error) {
	typ := in.Type
	if typ == "" {
		typ = "string"
	}
	switch typ {
	case "string":
		if s, ok := v.(string); ok {
			return s, nil
		}
	case "number":
		switch n := v.(type) {
		case float64:
			return n, nil
		case int:
			return float64(n), nil
		case int64:
			return float64(n), nil
		case uint64:
			return float64(n), nil
		case json.Number:
			return n.Float64()
		case string:
			f, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not a number", n)
			}
			return f, nil
		}
	case "boolean":
		switch b := v.(type) {
		case bool:
			return b, nil
		case string:
			x, err := strconv.ParseBool(b)
			if err != nil {
				return nil, fmt.Errorf("%q is not a boolean (true or false)", b)
			}
			return x, nil
		}
	}
	return nil, fmt.Errorf("a %T value is not a %s", v, typ)
}
