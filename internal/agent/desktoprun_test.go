package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/wire"
)

// Tests of the parts of desktop runs that need no root; the runs
// themselves are in desktoprun_linux_test.go.

func TestOutputsParseAndCheck(t *testing.T) {
	decls := []wire.OutputDecl{{Name: "total", Type: "number", Required: true}, {Name: "name", Type: "string"}, {Name: "ok", Type: "boolean"}}
	for _, tc := range []struct {
		name, in string
		want     map[string]any
		field    string // "" = valid
	}{
		{"json", `{"total": 42, "name": "x", "ok": true}`, map[string]any{"total": 42.0, "name": "x", "ok": true}, ""},
		{"kv", "# comment\ntotal=42\r\n\nname=a=b\nok=false\n", map[string]any{"total": 42.0, "name": "a=b", "ok": false}, ""},
		{"kv last wins", "total=1\ntotal=2\n", map[string]any{"total": 2.0}, ""},
		{"missing required", `{"name": "x"}`, nil, "outputs.total"},
		{"empty file, required", "", nil, "outputs.total"},
		{"json null is missing", `{"total": null}`, nil, "outputs.total"},
		{"wrong json type", `{"total": "42"}`, nil, "outputs.total"},
		{"wrong text type", "total=forty\n", nil, "outputs.total"},
		{"undeclared", `{"total": 1, "extra": 2}`, nil, "outputs.extra"},
		{"not json", `{"total": `, nil, ""},
		{"not kv", "total 42\n", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, perr := parseOutputs([]byte(tc.in))
			var got map[string]any
			var err *deskrun.Error
			if perr != nil {
				err = perr
			} else {
				got, err = checkOutputs(raw, decls)
			}
			if tc.want != nil {
				require.Nil(t, err)
				require.Equal(t, tc.want, got)
				return
			}
			require.NotNil(t, err)
			require.Equal(t, deskrun.CodeDesktopFlowOutputInvalid, err.Code)
			if tc.field != "" {
				require.Equal(t, tc.field, err.Field, err.Message)
			}
		})
	}
}

func TestInputEnvName(t *testing.T) {
	require.Equal(t, "DESKRUN_INPUT_CUSTOMER_ID", InputEnvName("customer_id"))
	require.Equal(t, "DESKRUN_INPUT_A_B_C", InputEnvName("a-b.c"))
	require.Equal(t, "3", formatInput(3.0))
	require.Equal(t, "0.5", formatInput(0.5))
	require.Equal(t, "true", formatInput(true))
}

func TestLineRingKeepsLastLines(t *testing.T) {
	r := lineRing{partial: map[string][]byte{}}
	r.write("stdout", []byte("par"))
	r.write("stdout", []byte("tial\nb\n"))
	require.Equal(t, []string{"partial", "b"}, r.snapshot())
	var big strings.Builder
	for i := range 1000 {
		big.WriteString(strings.Repeat("x", i%3) + "\n")
	}
	big.WriteString("last line\r\nunfinished")
	r.write("stderr", []byte(big.String()))
	s := r.snapshot()
	require.Len(t, s, lastLinesKept)
	require.Equal(t, "last line", s[len(s)-2])
	require.Equal(t, "unfinished", s[len(s)-1])
	r.write("stdout", []byte(strings.Repeat("y", 5000)+"\n"))
	s = r.snapshot()
	require.Len(t, s[len(s)-2], maxLineBytes)
}

func TestLogShipperOrdersAndBatches(t *testing.T) {
	var frames []*wire.LogChunk
	s := newLogShipper("job1", func(f *wire.Frame) { frames = append(frames, f.Log) })
	w := s.writer("stdout")
	total := 0
	for range 100 {
		n, _ := w.Write(make([]byte, 5000))
		total += n
	}
	_, _ = s.writer("stderr").Write([]byte("oops\n"))
	s.close()
	got := 0
	for i, c := range frames {
		require.Equal(t, int64(i+1), c.Seq)
		require.Equal(t, "job1", c.ID)
		require.LessOrEqual(t, len(c.Data), 2*logChunkBytes)
		if c.Stream == "stdout" {
			got += len(c.Data)
		}
	}
	require.Equal(t, total, got)
	last := frames[len(frames)-1]
	require.Equal(t, "stderr", last.Stream)
	require.Equal(t, "oops\n", string(last.Data))
	require.Contains(t, s.lastLines(), "oops")
}

func TestRunsBase(t *testing.T) {
	private, err := os.MkdirTemp("", "deskrun-runs-base-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(private) })
	a := &Agent{StateDir: filepath.Join(private, "state")}
	require.NoError(t, os.Chmod(private, 0o700)) // a run's user could not reach STATE/runs
	require.Equal(t, fallbackRunsDir, a.runsBase())
	require.NoError(t, os.Chmod(private, 0o711))
	if filepath.Dir(private) == "/tmp" {
		require.Equal(t, filepath.Join(private, "state", runsDir), a.runsBase())
	}
	a.RunsDir = "/srv/runs"
	require.Equal(t, "/srv/runs", a.runsBase())
}
