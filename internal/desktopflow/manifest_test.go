package desktopflow_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
)

func requireCode(t *testing.T, err error, code string) *deskrun.Error {
	t.Helper()
	var de *deskrun.Error
	require.True(t, errors.As(err, &de), "want a *deskrun.Error with code %s, got %T: %v", code, err, err)
	require.Equal(t, code, de.Code, "error: %v", err)
	return de
}

const full = `name: invoice-entry
description: Types invoices into the ERP
inputs:
  - name: customer
    required: true
    description: the customer's id
  - name: amount
    type: number
    default: 12.5
  - name: dry_run
    type: boolean
    default: false
  - name: note
    default: "none"
outputs:
  - name: invoice_id
    description: the number the ERP gave
run: ./enter.sh --fast
desktop: true
timeout: 2h
`

func TestParseManifest(t *testing.T) {
	t.Parallel()
	m, err := desktopflow.ParseManifest("flow/desktopflow.yaml", []byte(full))
	require.NoError(t, err)
	require.Equal(t, "invoice-entry", m.Name)
	require.Equal(t, "Types invoices into the ERP", m.Description)
	require.Equal(t, []desktopflow.Param{
		{Name: "customer", Type: "string", Required: true, Description: "the customer's id"},
		{Name: "amount", Type: "number", Default: 12.5},
		{Name: "dry_run", Type: "boolean", Default: false},
		{Name: "note", Type: "string", Default: "none"},
	}, m.Inputs)
	require.Equal(t, []desktopflow.Param{{Name: "invoice_id", Type: "string", Description: "the number the ERP gave"}}, m.Outputs)
	require.Equal(t, "./enter.sh --fast", m.Run)
	require.True(t, m.Desktop)
	require.Equal(t, desktopflow.Duration(2*time.Hour), m.Timeout)

	// The JSON form (what the server stores and shows) reads back the same.
	b, err := json.Marshal(m)
	require.NoError(t, err)
	require.Contains(t, string(b), `"timeout":"2h0m0s"`)
	require.Contains(t, string(b), `"default":false`, "a false default is kept")
	var back desktopflow.Manifest
	require.NoError(t, json.Unmarshal(b, &back))
	b2, err := json.Marshal(&back)
	require.NoError(t, err)
	require.JSONEq(t, string(b), string(b2))

	m, err = desktopflow.ParseManifest("m.yaml", []byte("# a flow\nname: tiny\nrun: |\n  echo hi\n  echo there\n"))
	require.NoError(t, err)
	require.Equal(t, "echo hi\necho there\n", m.Run, "a block scalar is a string")
	require.Equal(t, desktopflow.Duration(desktopflow.DefaultTimeout), m.Timeout)
	require.False(t, m.Desktop)
	require.Nil(t, m.Inputs)
}

func TestParseManifestErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, doc, field, where, msg string
	}{
		{"unknown field", "name: a\nrun: x\ncolour: red\n", "colour", "m.yaml:3:1", `unknown field "colour"`},
		{"unknown input field", "name: a\nrun: x\ninputs:\n  - name: b\n    requird: true\n", "inputs[0].requird", "m.yaml:5:5", `unknown field "requird"`},
		{"required or default on an output", "name: a\nrun: x\noutputs:\n  - name: b\n    default: 1\n", "outputs[0].default", "m.yaml:5:5", "unknown field"},
		{"missing name", "run: x\n", "name", "m.yaml:1:1", `missing required field "name"`},
		{"missing run", "name: a\n", "run", "m.yaml:1:1", `missing required field "run"`},
		{"empty run", "name: a\nrun: '  '\n", "run", "m.yaml:2:6", "run is empty"},
		{"name of the wrong type", "name: 123\nrun: x\n", "name", "m.yaml:1:7", `must be a string, not a number (quote it: "123")`},
		{"name a list", "name: [a]\nrun: x\n", "name", "m.yaml:1:7", "must be a string, not a list"},
		{"bad flow name", "name: a/b\nrun: x\n", "name", "m.yaml:1:7", "not a valid flow name"},
		{"desktop yes", "name: a\nrun: x\ndesktop: yes\n", "desktop", "m.yaml:3:10", "must be a boolean"},
		{"desktop quoted", "name: a\nrun: x\ndesktop: \"true\"\n", "desktop", "m.yaml:3:10", "must be a boolean"},
		{"timeout not a duration", "name: a\nrun: x\ntimeout: soon\n", "timeout", "m.yaml:3:10", "not a duration"},
		{"timeout a number", "name: a\nrun: x\ntimeout: 30\n", "timeout", "m.yaml:3:10", "must be a duration such as 30m or 2h, not a number"},
		{"timeout too long", "name: a\nrun: x\ntimeout: 25h\n", "timeout", "m.yaml:3:10", "out of range"},
		{"timeout zero", "name: a\nrun: x\ntimeout: 0s\n", "timeout", "m.yaml:3:10", "out of range"},
		{"inputs a mapping", "name: a\nrun: x\ninputs: {b: 1}\n", "inputs", "m.yaml:3:9", "must be a list, not a mapping"},
		{"input not a mapping", "name: a\nrun: x\ninputs:\n  - b\n", "inputs[0]", "m.yaml:4:5", "must be a mapping"},
		{"input without name", "name: a\nrun: x\ninputs:\n  - type: number\n", "inputs[0].name", "m.yaml:4:5", `missing required field "name"`},
		{"bad input name", "name: a\nrun: x\ninputs:\n  - name: first-name\n", "inputs[0].name", "m.yaml:4:11", "not a valid name"},
		{"input name starting with a digit", "name: a\nrun: x\ninputs:\n  - name: 1st\n", "inputs[0].name", "m.yaml:4:11", "not a valid name"},
		{"duplicate input", "name: a\nrun: x\ninputs:\n  - name: b\n  - name: B\n", "inputs[1].name", "m.yaml:5:11", "declared twice"},
		{"unknown type", "name: a\nrun: x\ninputs:\n  - name: b\n    type: int\n", "inputs[0].type", "m.yaml:5:11", `unknown type "int"`},
		{"default of the wrong type", "name: a\nrun: x\ninputs:\n  - name: b\n    type: number\n    default: ten\n", "inputs[0].default", "m.yaml:6:14", "must be a number, not a string"},
		{"boolean default a string", "name: a\nrun: x\ninputs:\n  - name: b\n    type: boolean\n    default: \"no\"\n", "inputs[0].default", "m.yaml:6:14", "must be a boolean"},
		{"string default a number", "name: a\nrun: x\ninputs:\n  - name: b\n    default: 3\n", "inputs[0].default", "m.yaml:5:14", "must be a string, not a number"},
		{"required with a default", "name: a\nrun: x\ninputs:\n  - name: b\n    required: true\n    default: c\n", "inputs[0].default", "m.yaml:6:14", "is required and has a default"},
		{"required not a boolean", "name: a\nrun: x\ninputs:\n  - name: b\n    required: 1\n", "inputs[0].required", "m.yaml:5:15", "must be a boolean"},
		{"duplicate key", "name: a\nname: b\nrun: x\n", "", "m.yaml:2:1", `"name" already defined`},
		{"syntax error", "name: a\n  run: [x\n", "", "m.yaml:", ""},
		{"not a mapping", "- a\n- b\n", "", "m.yaml:1:1", "the manifest must be a mapping"},
		{"two documents", "name: a\nrun: x\n---\nname: b\n", "", "m.yaml:4:1", "2 YAML documents"},
		{"empty", "# nothing\n", "", "m.yaml:1:1", "empty"},
		{"anchor", "name: &n a\nrun: *n\n", "", "m.yaml:1:7", "anchors, aliases"},
		{"tag", "name: !!str a\nrun: x\n", "", "m.yaml:1:7", "tags are not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, err := desktopflow.ParseManifest("m.yaml", []byte(tc.doc))
			require.Nil(t, m)
			de := requireCode(t, err, deskrun.CodeDesktopFlowInvalid)
			require.Equal(t, tc.field, de.Field)
			require.Contains(t, de.Message, tc.where)
			require.Contains(t, de.Message, tc.msg)
			if tc.field != "" {
				require.Contains(t, de.Message, "field "+tc.field+":")
			}
		})
	}
}

func TestBindInputs(t *testing.T) {
	t.Parallel()
	m, err := desktopflow.ParseManifest("m.yaml", []byte(full))
	require.NoError(t, err)

	got, err := m.BindInputs(map[string]string{"customer": "c-17", "amount": "3", "dry_run": "true"})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"customer": "c-17", "amount": 3.0, "dry_run": true, "note": "none"}, got)

	got, err = m.BindInputs(map[string]string{"customer": ""})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"customer": "", "amount": 12.5, "dry_run": false, "note": "none"}, got, "defaults fill what is not given")

	for _, tc := range []struct {
		name  string
		given map[string]string
		field string
		msg   string
	}{
		{"undeclared", map[string]string{"customer": "c", "colour": "red"}, "colour", `input "colour" is not declared by flow invoice-entry`},
		{"missing required", map[string]string{"amount": "1"}, "customer", `input "customer" is required`},
		{"not a number", map[string]string{"customer": "c", "amount": "abc"}, "amount", `input "amount" must be a number, not "abc"`},
		{"infinite", map[string]string{"customer": "c", "amount": "Inf"}, "amount", "must be a number"},
		{"not a boolean", map[string]string{"customer": "c", "dry_run": "maybe"}, "dry_run", "must be a boolean"},
	} {
		_, err := m.BindInputs(tc.given)
		de := requireCode(t, err, deskrun.CodeDesktopFlowInputInvalid)
		require.Equal(t, tc.field, de.Field, tc.name)
		require.Contains(t, de.Message, tc.msg, tc.name)
		require.Contains(t, de.Resolution, "customer (string, required)", tc.name)
	}

	// Every problem is named at once.
	_, err = m.BindInputs(map[string]string{"zz": "1", "amount": "x"})
	de := requireCode(t, err, deskrun.CodeDesktopFlowInputInvalid)
	require.Equal(t, "zz", de.Field)
	require.Contains(t, de.Message, `"zz" is not declared`)
	require.Contains(t, de.Message, `"amount" must be a number`)
	require.Contains(t, de.Message, `"customer" is required`)

	bare, err := desktopflow.ParseManifest("m.yaml", []byte("name: bare\nrun: x\n"))
	require.NoError(t, err)
	_, err = bare.BindInputs(map[string]string{"x": "1"})
	de = requireCode(t, err, deskrun.CodeDesktopFlowInputInvalid)
	require.Equal(t, "Flow bare takes no inputs.", de.Resolution)
	got, err = bare.BindInputs(nil)
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestFormatValue(t *testing.T) {
	t.Parallel()
	require.Equal(t, "3", desktopflow.FormatValue(3.0))
	require.Equal(t, "0.1", desktopflow.FormatValue(0.1))
	require.Equal(t, "1000000", desktopflow.FormatValue(1e6))
	require.Equal(t, "false", desktopflow.FormatValue(false))
	require.Equal(t, "x y", desktopflow.FormatValue("x y"))
}
