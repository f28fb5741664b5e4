// Package desktopflow is the package format of a desktop flow: a directory
// with a desktopflow.yaml manifest and the files it runs, packed into a
// deterministic, content-addressed tar.gz.
//
// The same checks run where a package is made (Pack, on the maker's
// machine), where it is accepted (Inspect, on the server, which trusts
// nothing the client says) and where it is used (Unpack, on the agent).
// Every refusal is a *deskrun.Error with one of the DesktopFlow* codes; a
// manifest error names FILE:LINE:COLUMN and the field.
package desktopflow

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/deskrun/deskrun"
)

// ManifestFile is the manifest's name at the root of a package.
const ManifestFile = "desktopflow.yaml"

// Timeouts of a flow's run.
const (
	DefaultTimeout = 30 * time.Minute
	MaxTimeout     = 24 * time.Hour
)

// MaxManifestBytes bounds desktopflow.yaml, which is parsed whole.
const MaxManifestBytes = 256 << 10

// Type is the type of an input or output.
type Type string

// The types of inputs and outputs. An input reaches the flow as the
// environment variable DESKRUN_INPUT_<NAME>, so every type is a string
// there; the type says what the string must hold.
const (
	TypeString  Type = "string"
	TypeNumber  Type = "number"
	TypeBoolean Type = "boolean"
)

// Manifest is desktopflow.yaml.
type Manifest struct {
	Name        string  `json:"name"`
	Description string  `json:"description,omitempty"`
	Inputs      []Param `json:"inputs,omitempty"`
	Outputs     []Param `json:"outputs,omitempty"`
	// Run is a command line for /bin/sh -c, run in the package's
	// directory. A script of the package is named with a leading "./"
	// (run: ./hello.sh); Pack and Inspect check that it is in the package.
	Run string `json:"run"`
	// Desktop says the flow needs a graphical session of its user.
	Desktop bool     `json:"desktop"`
	Timeout Duration `json:"timeout"`

	// runPos is where Run is written, for errors found after parsing
	// (a script missing from the package).
	file   string
	runPos position
}

// Param is an input or an output. Outputs have no Required or Default.
type Param struct {
	Name     string `json:"name"`
	Type     Type   `json:"type"`
	Required bool   `json:"required,omitempty"`
	// Default is a string, a float64 or a bool, after Type; nil for none.
	Default     any    `json:"default,omitempty"`
	Description string `json:"description,omitempty"`
}

// Duration is a time.Duration written as "30m" in YAML and "30m0s" in
// JSON.
type Duration time.Duration

// MarshalText writes the duration as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads a duration such as "30m".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ParamName is the rule for input and output names: they become
// environment variables (DESKRUN_INPUT_<NAME>).
var paramName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// flowName is the rule for flow names, which appear in URLs and paths.
// It is compiled at first use, not at init: the {0,62} expands to 62
// nested options, ≈ 0.25 ms that every deskrun process would pay.
var flowName = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
})

// ValidName reports whether name is a valid desktop flow name.
func ValidName(name string) bool { return flowName().MatchString(name) }

// ParseManifest parses and validates a manifest. path names the file in
// errors (as the user knows it: "examples/hello/desktopflow.yaml"). Every
// error is a *deskrun.Error with CodeDesktopFlowInvalid, a message that
// starts with PATH:LINE:COLUMN and names the field, and Field set.
//
// Decoding is strict: unknown fields, a value of the wrong YAML type
// (name: 123, desktop: "yes"), duplicate keys, several documents, anchors,
// aliases and tags are all refused.
func ParseManifest(path string, data []byte) (*Manifest, error) {
	if len(data) > MaxManifestBytes {
		return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowInvalid,
			Message: fmt.Sprintf("%s: the manifest is %d bytes, over the limit of %d", path, len(data), MaxManifestBytes)}
	}
	d, err := parseYAML(path, data)
	if err != nil {
		return nil, err
	}
	m := &Manifest{file: path, Timeout: Duration(DefaultTimeout)}
	top, err := d.mapping(d.root, "", "name", "description", "inputs", "outputs", "run", "desktop", "timeout")
	if err != nil {
		return nil, err
	}
	if m.Name, err = d.str(top, "", "name", true); err != nil {
		return nil, err
	}
	if !ValidName(m.Name) {
		return nil, d.errorf(top.fields["name"].value, "name", "%q is not a valid flow name: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", m.Name)
	}
	if m.Description, err = d.str(top, "", "description", false); err != nil {
		return nil, err
	}
	if m.Run, err = d.str(top, "", "run", true); err != nil {
		return nil, err
	}
	if strings.TrimSpace(m.Run) == "" {
		return nil, d.errorf(top.fields["run"].value, "run", "run is empty: give a command line or ./script")
	}
	m.runPos = d.pos(top.fields["run"].value)
	if m.Desktop, err = d.boolean(top, "", "desktop"); err != nil {
		return nil, err
	}
	if t, ok := top.value("timeout"); ok {
		s, err := d.str(top, "", "timeout", false)
		if err != nil {
			return nil, d.errorf(t, "timeout", "must be a duration such as 30m or 2h, not %s", kind(t))
		}
		v, perr := time.ParseDuration(s)
		switch {
		case perr != nil:
			return nil, d.errorf(t, "timeout", "%q is not a duration such as 30m or 2h", s)
		case v <= 0 || v > MaxTimeout:
			return nil, d.errorf(t, "timeout", "%s is out of range: use more than 0 and at most %s", s, MaxTimeout)
		}
		m.Timeout = Duration(v)
	}
	if m.Inputs, err = d.params(top, "inputs", true); err != nil {
		return nil, err
	}
	if m.Outputs, err = d.params(top, "outputs", false); err != nil {
		return nil, err
	}
	return m, nil
}

// params reads the list of inputs (withValues: required and default
// allowed) or outputs.
func (d *decoder) params(top object, key string, withValues bool) ([]Param, error) {
	v, ok := top.value(key)
	if !ok {
		return nil, nil
	}
	items, err := d.sequence(v, key)
	if err != nil {
		return nil, err
	}
	fields := []string{"name", "type", "description"}
	if withValues {
		fields = append(fields, "required", "default")
	}
	ps := make([]Param, 0, len(items))
	seen := map[string]bool{}
	for i, item := range items {
		field := fmt.Sprintf("%s[%d]", key, i)
		fs, err := d.mapping(item, field, fields...)
		if err != nil {
			return nil, err
		}
		var p Param
		if p.Name, err = d.str(fs, field, "name", true); err != nil {
			return nil, err
		}
		if !paramName.MatchString(p.Name) {
			return nil, d.errorf(fs.fields["name"].value, field+".name", "%q is not a valid name: use letters, digits and '_', not starting with a digit (it becomes DESKRUN_INPUT_<NAME>)", p.Name)
		}
		// Names are compared as the environment variable they become.
		up := strings.ToUpper(p.Name)
		if seen[up] {
			return nil, d.errorf(fs.fields["name"].value, field+".name", "%q is declared twice in %s (names are compared without case)", p.Name, key)
		}
		seen[up] = true
		t, err := d.str(fs, field, "type", false)
		if err != nil {
			return nil, err
		}
		p.Type = Type(t)
		switch p.Type {
		case "":
			p.Type = TypeString
		case TypeString, TypeNumber, TypeBoolean:
		default:
			return nil, d.errorf(fs.fields["type"].value, field+".type", "unknown type %q: use string, number or boolean", t)
		}
		if p.Description, err = d.str(fs, field, "description", false); err != nil {
			return nil, err
		}
		if withValues {
			if p.Required, err = d.boolean(fs, field, "required"); err != nil {
				return nil, err
			}
			if def, ok := fs.value("default"); ok {
				if p.Required {
					return nil, d.errorf(def, field+".default", "input %q is required and has a default: drop one of them", p.Name)
				}
				if p.Default, err = d.typedScalar(def, field+".default", p.Type); err != nil {
					return nil, err
				}
			}
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// Input returns the declared input called name.
func (m *Manifest) Input(name string) (Param, bool) {
	i := slices.IndexFunc(m.Inputs, func(p Param) bool { return p.Name == name })
	if i < 0 {
		return Param{}, false
	}
	return m.Inputs[i], true
}

// BindInputs checks the inputs given to a run against the manifest and
// returns every declared input that has a value: the given ones converted
// to their type (string, float64, bool), and the defaults of the others.
// An undeclared input, a missing required one or a value that is not of
// its type is a *deskrun.Error with CodeDesktopFlowInputInvalid, naming
// every problem (Field is the first input at fault).
func (m *Manifest) BindInputs(given map[string]string) (map[string]any, error) {
	out := make(map[string]any, len(m.Inputs))
	var problems, fields []string
	fail := func(field, format string, args ...any) {
		fields = append(fields, field)
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	undeclared := make([]string, 0)
	for name := range given {
		if _, ok := m.Input(name); !ok {
			undeclared = append(undeclared, name)
		}
	}
	slices.Sort(undeclared)
	for _, name := range undeclared {
		fail(name, "input %q is not declared by flow %s", name, m.Name)
	}
	for _, p := range m.Inputs {
		s, ok := given[p.Name]
		switch {
		case ok:
			v, err := convert(s, p.Type)
			if err != nil {
				fail(p.Name, "input %q must be a %s, not %q", p.Name, p.Type, s)
				continue
			}
			out[p.Name] = v
		case p.Required:
			fail(p.Name, "input %q is required", p.Name)
		case p.Default != nil:
			out[p.Name] = p.Default
		}
	}
	if len(problems) > 0 {
		e := &deskrun.Error{Code: deskrun.CodeDesktopFlowInputInvalid, Field: fields[0], Message: strings.Join(problems, "; ")}
		if names := m.inputNames(); names != "" {
			e.Resolution = fmt.Sprintf("Flow %s takes: %s.", m.Name, names)
		} else {
			e.Resolution = fmt.Sprintf("Flow %s takes no inputs.", m.Name)
		}
		return nil, e
	}
	return out, nil
}

func (m *Manifest) inputNames() string {
	var parts []string
	for _, p := range m.Inputs {
		s := p.Name + " (" + string(p.Type)
		if p.Required {
			s += ", required"
		}
		parts = append(parts, s+")")
	}
	return strings.Join(parts, ", ")
}

// convert reads an input given as text.
func convert(s string, t Type) (any, error) {
	switch t {
	case TypeNumber:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("not a number")
		}
		return f, nil
	case TypeBoolean:
		return strconv.ParseBool(strings.TrimSpace(s))
	}
	return s, nil
}

// FormatValue renders an input value as the text the flow receives in its
// environment: numbers without exponent or trailing zeros, booleans as
// true/false.
func FormatValue(v any) string {
	switch v := v.(type) {
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case string:
		return v
	}
	b, _ := json.Marshal(v)
	return string(b)
}
