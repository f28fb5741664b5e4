package flow

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
)

const good = `name: greet
description: greets on a webhook
inputs:
  - name: who
    required: true
  - name: times
    type: number
    default: 2
triggers:
  schedule:
    cron: "*/15 8-18 * * 1-5"
    timezone: Europe/Paris
    missed: run-once
    inputs: {who: cron}
  webhook:
    secret: hook_key
concurrency: {max: 1, overlap: skip}
steps:
  - id: desk
    desktop:
      flow: probe
      connection: robot
      inputs:
        greeting: "hello ${{ inputs.who }} x${{ inputs.times }}"
    retry: {max: 5, backoff: 2s}
  - id: post
    if: steps.desk.status == "succeeded" && inputs.times > 1.0
    http:
      url: "http://127.0.0.1:1/${{ steps.desk.outputs.uid }}"
      headers:
        Authorization: "Bearer ${{ secrets.api }}"
      json: '{"uid": steps.desk.outputs.uid, "who": inputs.who}'
      expect_status: [200, 204]
outputs:
  status: "${{ steps.post.outputs.status }}"
  who: "${{ inputs.who }}"
`

func TestParseGood(t *testing.T) {
	t.Parallel()
	d, err := Parse("greet.yaml", []byte(good))
	require.NoError(t, err)
	require.Equal(t, "greet", d.HookID())
	max, overlap := d.Limit()
	require.Equal(t, 1, max)
	require.Equal(t, OverlapSkip, overlap)
	require.Equal(t, "POST", d.Steps[1].HTTP.Method)

	in, err := d.BindInputs(map[string]any{"who": "Ada"})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"who": "Ada", "times": 2.0}, in)
	steps := map[string]StepState{"desk": {Status: "succeeded", Outputs: map[string]any{"uid": 1001.0}}}
	vars := Vars(map[string]any{"kind": "manual"}, in, steps, map[string]string{"api": "s3cret"})
	ok, err := d.Steps[1].Cond().EvalBool(t.Context(), vars)
	require.NoError(t, err)
	require.True(t, ok)
	di, err := d.Steps[0].Desktop.RenderInputs(t.Context(), vars)
	require.NoError(t, err)
	require.Equal(t, map[string]string{"greeting": "hello Ada x2"}, di)
	url, headers, body, err := d.Steps[1].HTTP.Request(t.Context(), Vars(nil, in, steps, map[string]string{"api": "s3cret"}))
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:1/1001", url)
	require.Equal(t, "Bearer s3cret", headers["Authorization"])
	require.JSONEq(t, `{"uid":1001,"who":"Ada"}`, string(body))
	steps["post"] = StepState{Status: "succeeded", Outputs: map[string]any{"status": int64(200)}}
	out, err := d.RenderOutputs(t.Context(), Vars(nil, in, steps, nil))
	require.NoError(t, err)
	require.Equal(t, map[string]any{"status": int64(200), "who": "Ada"}, out)

	// Every Monday 08:00 Paris is 07:00 UTC in winter.
	s := d.Schedule()
	next := s.Next(time.Date(2025, 1, 6, 6, 50, 0, 0, time.UTC))
	require.Equal(t, time.Date(2025, 1, 6, 7, 0, 0, 0, time.UTC), next)
}

func TestParseRefuses(t *testing.T) {
	t.Parallel()
	head := "name: f\nsteps:\n"
	http := "  - id: a\n    http: {url: 'https://x'}\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown step type", head + "  - id: a\n    shell: {run: ls}\n", "f.yaml:3:5: steps[0]: unknown step type"},
		{"no step type", head + "  - id: a\n", "a step needs exactly one of desktop or http"},
		{"two step types", head + "  - id: a\n    http: {url: 'https://x'}\n    desktop: {flow: d, connection: c}\n", "a step needs exactly one of desktop or http"},
		{"duplicate id", head + http + http, `f.yaml:5:9: steps[1].id: step id "a" is already used by steps[0]`},
		{"later step", head + "  - id: a\n    if: steps.b.status == 'ok'\n    http: {url: 'https://x'}\n  - id: b\n    http: {url: 'https://x'}\n", `f.yaml:4:9: steps[0].if: step "a" refers to step "b", which runs after it`},
		{"self reference", head + "  - id: a\n    if: steps.a.status == 'ok'\n    http: {url: 'https://x'}\n", `refers to itself`},
		{"unknown step", head + "  - id: a\n    if: steps.zz.status == 'ok'\n    http: {url: 'https://x'}\n", `no step has the id "zz"`},
		{"type error", "name: f\ninputs: [{name: n, type: number}]\nsteps:\n  - id: a\n    if: inputs.n + 'x' == 1\n    http: {url: 'https://x'}\n", "f.yaml:5:9: steps[0].if: expression"},
		{"not bool", head + "  - id: a\n    if: \"'yes'\"\n    http: {url: 'https://x'}\n", "not a bool"},
		{"unknown input", head + "  - id: a\n    http: {url: 'https://x/${{ inputs.nope }}'}\n", "undeclared reference"},
		{"syntax", head + "  - id: a\n    if: 'a ==== b'\n    http: {url: 'https://x'}\n", "does not type-check"},
		{"bad cron", "name: f\ntriggers:\n  schedule: {cron: 'every day'}\n" + "steps:\n" + http, "f.yaml:3:20: triggers.schedule.cron: cron \"every day\" is not a 5-field"},
		{"bad cron field", "name: f\ntriggers:\n  schedule: {cron: '61 * * * *'}\n" + "steps:\n" + http, "is not valid"},
		{"six fields", "name: f\ntriggers:\n  schedule: {cron: '0 0 * * * *'}\n" + "steps:\n" + http, "not a 5-field"},
		{"bad zone", "name: f\ntriggers:\n  schedule: {cron: '0 * * * *', timezone: Mars/Olympus}\n" + "steps:\n" + http, `triggers.schedule.timezone: unknown time zone "Mars/Olympus"`},
		{"inline secret", head + "  - id: a\n    http:\n      url: 'https://x'\n      headers: {Authorization: 'Bearer abc'}\n", "keep secrets out of the definition"},
		{"secret in body", head + "  - id: a\n    http: {url: 'https://x', body: '${{ secrets.k }}'}\n", "undeclared reference to 'secrets'"},
		{"missing steps", "name: f\n", "missing property 'steps'"},
		{"bad field type", "name: f\nconcurrency: {max: many}\nsteps:\n" + http, "f.yaml:2:20: concurrency.max"},
		{"unknown top field", "name: f\nstep: []\nsteps:\n" + http, "additional properties 'step'"},
		{"bad default", "name: f\ninputs: [{name: n, type: number, default: lots}]\nsteps:\n" + http, "inputs[0].default"},
		{"bad schedule inputs", "name: f\ninputs: [{name: n, type: boolean}]\ntriggers:\n  schedule: {cron: '0 * * * *', inputs: {n: maybe}}\nsteps:\n" + http, "triggers.schedule.inputs"},
		{"yaml syntax", "name: [\n", "f.yaml:"},
		{"anchor", "name: &x f\nsteps:\n" + http, "anchors"},
		{"bad duration", head + "  - id: a\n    retry: {max: 2, backoff: soon}\n    http: {url: 'https://x'}\n", "steps[0].retry.backoff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("f.yaml", []byte(tc.yaml))
			require.Error(t, err)
			require.True(t, deskrun.IsCode(err, deskrun.CodeFlowInvalid), "%v", err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestBindInputs(t *testing.T) {
	t.Parallel()
	d, err := Parse("f.yaml", []byte("name: f\ninputs:\n  - {name: n, type: number, required: true}\n  - {name: b, type: boolean}\nsteps:\n  - id: a\n    http: {url: 'https://x'}\n"))
	require.NoError(t, err)
	for _, bad := range []map[string]any{
		{},                         // missing
		{"n": "many"},              // not a number
		{"n": 1.0, "b": 3.0},       // not a boolean
		{"n": 1.0, "zz": "x"},      // undeclared
		{"n": map[string]any{}},    // object
		{"n": 1.0, "b": "perhaps"}, // not a boolean string
	} {
		_, err := d.BindInputs(bad)
		require.True(t, deskrun.IsCode(err, deskrun.CodeFlowInputInvalid), "%v: %v", bad, err)
	}
	in, err := d.BindInputs(map[string]any{"n": "3.5", "b": "true"})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"n": 3.5, "b": true}, in)
}
