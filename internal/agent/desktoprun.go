package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktop"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/runas"
	"github.com/deskrun/deskrun/internal/wire"
)

// Limits and layout of desktop runs.
const (
	// runsDir (under the state directory) holds one directory per run,
	// owned by the run's user: work/ (the package's copy, the flow's
	// working directory), inputs.json, outputs and Xauthority.
	runsDir = "runs"
	// defaultRunTimeout applies when the payload carries none.
	defaultRunTimeout = 30 * time.Minute
	// maxOutputFile bounds $DESKRUN_OUTPUT.
	maxOutputFile = 1 << 20
	// Log shipping: a chunk goes out when it reaches logChunkBytes or
	// every logFlushEvery; at most logQueueLen chunks wait for the
	// connection, after which the flow's writes block (its pipe fills and
	// it waits) instead of the agent's memory growing.
	logChunkBytes = 32 << 10
	logFlushEvery = 100 * time.Millisecond
	logQueueLen   = 8
	// The last lines of output kept for DesktopFlowFailed, each cut at
	// maxLineBytes.
	lastLinesKept = 20
	maxLineBytes  = 1024
	// Progress messages the server maps to run states.
	progressLoggingOn = "state:logging-on"
	progressRunning   = "state:running"
)

type jobIDKey struct{}

// withJobID puts the job's id in the executor's context (log frames carry it).
func withJobID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, jobIDKey{}, id)
}

func jobIDOf(ctx context.Context) string {
	s, _ := ctx.Value(jobIDKey{}).(string)
	return s
}

// desktopRun is the executor of "desktop" jobs: fetch the package, apply
// the machine's session rules, log the connection's user on and open its
// PAM session, prepare a working directory of the user's, give the run a
// display (its own Xvfb, or the user's X session when attended), run the
// flow as the user with its output streamed to the server, and map the
// end to a result. Whatever happens, the display, the run directory and
// the session are closed, and the password was zeroed right after logon.
//
// It returns a DesktopOutput together with the error when the flow itself
// failed (exit code, last lines, screenshot): execute sends both.
func (a *Agent) desktopRun(ctx context.Context, raw json.RawMessage, progress func(string)) (json.RawMessage, error) {
	var p wire.DesktopPayload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Message: "malformed desktop payload"}
	}
	attended := false
	switch p.RunMode {
	case "", "unattended":
	case "attended":
		attended = true
	default:
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "run_mode", Message: "run mode must be unattended or attended, not " + strconv.Quote(p.RunMode)}
	}
	if strings.TrimSpace(p.Run) == "" || p.Digest == "" {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Message: "the desktop payload has no command or no package digest"}
	}
	exclusive := !attended && p.Sessions == "exclusive"
	out := &wire.DesktopOutput{ExitCode: -1, Timings: map[string]int64{}}
	stage := func(name string, since time.Time) { out.Timings[name] = time.Since(since).Microseconds() }

	// The package first: no logon for a flow that cannot run.
	pkg, err := a.PackageDir(ctx, p.Digest, a.fetchPackage)
	if err != nil {
		return nil, orCancelled(ctx, err)
	}

	progress(progressLoggingOn)
	// Session rules, before the logon when NSS already knows the user (no
	// logon attempt for a run that cannot happen), again after it with
	// the identity the logon resolved.
	if exclusive {
		if uid, ok := lookupUID(p.Credential.Username); ok {
			if err := userHasSession(uid, p.Credential.Username); err != nil {
				return nil, err
			}
		}
	}
	t0 := time.Now()
	res, sess, err := a.openCredential(ctx, &p.Credential, true)
	stage("logon", t0)
	if err != nil {
		return nil, orCancelled(ctx, a.downgrade(err))
	}
	if sess != nil {
		defer func() {
			if err := sess.Close(); err != nil {
				a.Log.Warn("desktop_run_session_close", "run_id", p.RunID, "err", err)
			}
		}()
	}
	id := res.Identity
	out.Identity, out.Warnings = wireIdentity(id), wireWarnings(res.Warnings)

	// The user's session: rules, working directory, inputs.
	t0 = time.Now()
	if exclusive {
		if err := userHasSession(id.UID, id.Username); err != nil {
			return nil, err
		}
	}
	runDir, err := a.makeRunDir(p.RunID, id)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := runas.RemoveRunDir(runDir); err != nil {
			a.Log.Warn("desktop_run_dir_remove", "run_id", p.RunID, "err", err)
		}
	}()
	env, err := prepareRunDir(runDir, pkg, &p, id)
	if err != nil {
		return nil, err
	}
	stage("session", t0)

	// The display.
	t0 = time.Now()
	var disp *desktop.Display
	switch {
	case attended:
		xenv, ok := findUserDisplay(id.UID)
		if !ok {
			return nil, &deskrun.Error{Code: deskrun.CodeAttendedUserNotLoggedIn,
				Message:    fmt.Sprintf("the run is attended, but %s has no X session on this machine (no X server of theirs, and no process of theirs with a DISPLAY)", id.Username),
				Resolution: "Sign " + id.Username + " in to a desktop on the machine, or run the flow unattended."}
		}
		env = append(env, xenv...)
	case p.Desktop:
		disp, err = desktop.Start(ctx, desktop.Options{UID: id.UID, GID: id.GID, Dir: runDir, Logger: a.Log})
		if err != nil {
			if ctx.Err() != nil {
				return nil, cancelledError()
			}
			return nil, &deskrun.Error{Code: deskrun.CodeInternal, Message: "could not start the run's virtual display: " + err.Error(),
				Resolution: "Check that Xvfb is installed (/usr/bin/Xvfb): `deskrun doctor`."}
		}
		defer func() {
			if err := disp.Close(); err != nil {
				a.Log.Warn("desktop_run_display_close", "run_id", p.RunID, "err", err)
			}
		}()
		env = append(env, disp.Env()...)
	}
	stage("display", t0)

	// The flow.
	send := a.sendFrame
	if send == nil {
		send = a.sendReliably
	}
	logs := newLogShipper(jobIDOf(ctx), send)
	var pid atomic.Int64
	var shot struct {
		sync.Mutex
		png []byte
	}
	timeout := time.Duration(p.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = defaultRunTimeout
	}
	spec := runas.Spec{
		Identity: id,
		Dir:      filepath.Join(runDir, "work"),
		Env:      env,
		Path:     "/bin/sh",
		Args:     []string{"-c", p.Run},
		Stdout:   logs.writer("stdout"),
		Stderr:   logs.writer("stderr"),
		Timeout:  timeout,
		Logger:   a.Log,
		Reaper:   a.reaper,
		// The screen is captured while the flow's windows still exist:
		// when the run is killed, when the flow failed, or when asked.
		BeforeKill: func(cause error) {
			if disp == nil {
				return
			}
			if cause == nil && !p.Screenshot {
				if n := pid.Load(); n > 0 && exitedZero(int(n)) {
					return
				}
			}
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			png, err := disp.ScreenshotPNG(sctx)
			if err != nil {
				a.Log.Warn("desktop_run_screenshot", "run_id", p.RunID, "err", err)
				return
			}
			shot.Lock()
			shot.png = png
			shot.Unlock()
		},
	}
	t0 = time.Now()
	proc, err := runas.Start(ctx, spec)
	stage("spawn", t0)
	if err != nil {
		logs.close()
		if ctx.Err() != nil || errors.Is(err, runas.ErrCancelled) {
			return nil, cancelledError()
		}
		if errors.Is(err, runas.ErrTimeout) {
			return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowTimeout,
				Message: fmt.Sprintf("the flow's time limit of %s passed before it had started", timeout)}
		}
		return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowFailed,
			Message: fmt.Sprintf("the flow could not be started as %s: %v", id.Username, err)}
	}
	pid.Store(int64(proc.Pid()))
	progress(progressRunning)
	t0 = time.Now()
	code, werr := proc.Wait()
	logs.close()
	stage("run", t0)
	out.ExitCode, out.Containment, out.LastLines = code, string(proc.Containment()), logs.lastLines()
	shot.Lock()
	png := shot.png
	shot.Unlock()

	var runErr *deskrun.Error
	switch {
	case errors.Is(werr, runas.ErrTimeout):
		runErr = &deskrun.Error{Code: deskrun.CodeDesktopFlowTimeout,
			Message: fmt.Sprintf("the flow ran longer than its timeout (%s) and was stopped, with everything it started", timeout)}
	case errors.Is(werr, runas.ErrCancelled), errors.Is(werr, runas.ErrKilled):
		runErr = cancelledError()
	case werr != nil:
		runErr = &deskrun.Error{Code: deskrun.CodeInternal, Message: "the flow's run failed: " + werr.Error()}
	case code != 0:
		msg := fmt.Sprintf("the flow exited with code %d", code)
		if tail := lastFew(out.LastLines, 3, 400); tail != "" {
			msg += "; last output: " + tail
		}
		runErr = &deskrun.Error{Code: deskrun.CodeDesktopFlowFailed, Message: msg}
	default:
		vals, err := readOutputs(filepath.Join(runDir, "outputs"), id.UID, p.Outputs)
		if err != nil {
			runErr = err
		}
		out.Outputs = vals
	}
	if png != nil && (runErr != nil || p.Screenshot) {
		out.Screenshot = png
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	if runErr != nil {
		return b, runErr
	}
	return b, nil
}

func cancelledError() *deskrun.Error {
	return &deskrun.Error{Code: deskrun.CodeJobCancelled, Message: "the run was cancelled"}
}

// orCancelled turns an error that a cancel caused into Cancelled.
func orCancelled(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return cancelledError()
	}
	return err
}

// lookupUID resolves a connection's username through NSS, when it can
// without a logon (local users, and directory users NSS knows by that
// name).
func lookupUID(username string) (uint32, bool) {
	name := username
	if i := strings.LastIndexByte(name, '\\'); i >= 0 {
		name = name[i+1:]
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(n), err == nil
}

// userHasSession enforces unattended-sessions: exclusive.
func userHasSession(uid uint32, name string) error {
	pids := foreignSessionProcesses(uid)
	if len(pids) == 0 {
		return nil
	}
	return &deskrun.Error{Code: deskrun.CodeSessionExistsUnattended,
		Message: fmt.Sprintf("%s already has a session on this machine (process %d and %d more), and the machine's unattended sessions are exclusive",
			name, pids[0], len(pids)-1),
		Resolution: "Sign " + name + " out of the machine, run the flow attended, or set the machine's unattended sessions to shared."}
}

// fallbackRunsDir holds run directories when the state directory sits
// below a directory the run's user cannot search (a private temporary
// directory, root's home): root's, 0711, like STATE/runs.
const fallbackRunsDir = "/var/lib/deskrun/runs"

// runsBase is where run directories go: Agent.RunsDir, else STATE/runs
// when every directory above the state directory lets others search it,
// else fallbackRunsDir.
func (a *Agent) runsBase() string {
	if a.RunsDir != "" {
		return a.RunsDir
	}
	abs, err := filepath.Abs(a.StateDir)
	if err != nil {
		return fallbackRunsDir
	}
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return fallbackRunsDir
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	return filepath.Join(abs, runsDir)
}

// makeRunDir makes BASE/<run>-<random>, owned by the user, 0700. BASE is
// root's, 0711; when it is STATE/runs, the state directory gets o+x
// (search only, no listing; every secret in it is 0600) so the user can
// reach it.
func (a *Agent) makeRunDir(runID string, id identity.Identity) (string, error) {
	base := a.runsBase()
	if err := os.MkdirAll(base, 0o711); err != nil {
		return "", fmt.Errorf("run directories: %w", err)
	}
	dirs := []string{base}
	if state, err := filepath.Abs(a.StateDir); err == nil && base == filepath.Join(state, runsDir) {
		dirs = []string{state, base}
	}
	for _, d := range dirs {
		st, err := os.Stat(d)
		if err != nil {
			return "", fmt.Errorf("run directories: %w", err)
		}
		if m := st.Mode().Perm(); m&0o011 != 0o011 {
			if err := os.Chmod(d, m|0o011); err != nil {
				return "", fmt.Errorf("run directories: %w", err)
			}
		}
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := safeName(runID) + "-" + hex.EncodeToString(rnd[:])
	return runas.CreateRunDir(base, name, id.UID, id.GID)
}

func safeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 48 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "run"
	}
	return b.String()
}

// prepareRunDir copies the package into runDir/work and writes the
// inputs, all owned by the user, and returns the flow's environment
// (on top of runas.BaseEnv).
func prepareRunDir(runDir, pkg string, p *wire.DesktopPayload, id identity.Identity) ([]string, error) {
	inputs := p.Inputs
	if inputs == nil {
		inputs = map[string]any{}
	}
	inJSON, err := json.Marshal(inputs)
	if err != nil {
		return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "inputs", Message: "the run's inputs cannot be encoded: " + err.Error()}
	}
	if err := copyPackage(pkg, runDir, "work", id.UID, id.GID); err != nil {
		return nil, fmt.Errorf("copy the package into the run directory: %w", err)
	}
	if err := writeUserFile(runDir, "inputs.json", inJSON, id.UID, id.GID); err != nil {
		return nil, fmt.Errorf("write the run's inputs: %w", err)
	}
	env := []string{
		"DESKRUN_INPUTS=" + filepath.Join(runDir, "inputs.json"),
		"DESKRUN_OUTPUT=" + filepath.Join(runDir, "outputs"),
	}
	names := make([]string, 0, len(inputs))
	for k := range inputs {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := formatInput(inputs[k])
		if strings.ContainsRune(v, 0) {
			return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Field: "inputs." + k, Message: "an input cannot contain a NUL byte"}
		}
		env = append(env, InputEnvName(k)+"="+v)
	}
	return env, nil
}

// InputEnvName is the environment variable of an input: DESKRUN_INPUT_
// and the name upper-cased, with anything but letters, digits and _ as _.
func InputEnvName(name string) string {
	b := []byte("DESKRUN_INPUT_" + strings.ToUpper(name))
	for i := len("DESKRUN_INPUT_"); i < len(b); i++ {
		c := b[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// formatInput is an input's text in the environment: numbers without
// exponent or trailing zeros, booleans as true/false.
func formatInput(v any) string {
	if v == nil {
		return ""
	}
	return desktopflow.FormatValue(v)
}

// readOutputs reads and checks what the flow wrote to $DESKRUN_OUTPUT: a
// JSON object, or key=value lines (blank lines and # comments skipped,
// the last value of a key wins). Every value must be a declared output of
// its type, and every required output must be there.
func readOutputs(path string, uid uint32, decls []wire.OutputDecl) (map[string]any, *deskrun.Error) {
	b, err := readUserFile(path, uid, maxOutputFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, outputInvalid("", "cannot read $DESKRUN_OUTPUT: "+err.Error())
	}
	raw, perr := parseOutputs(b)
	if perr != nil {
		return nil, perr
	}
	return checkOutputs(raw, decls)
}

func outputInvalid(field, msg string) *deskrun.Error {
	e := &deskrun.Error{Code: deskrun.CodeDesktopFlowOutputInvalid, Message: msg,
		Resolution: "Write the declared outputs to $DESKRUN_OUTPUT as a JSON object or as name=value lines."}
	if field != "" {
		e.Field = "outputs." + field
	}
	return e
}

// parseOutputs returns JSON values (string, float64, bool, …) or, for
// key=value lines, strings.
func parseOutputs(b []byte) (map[string]any, *deskrun.Error) {
	vals := map[string]any{}
	t := bytes.TrimSpace(b)
	if len(t) == 0 {
		return vals, nil
	}
	if t[0] == '{' {
		var m map[string]any
		if err := json.Unmarshal(t, &m); err != nil {
			return nil, outputInvalid("", "$DESKRUN_OUTPUT starts like JSON but is not a JSON object: "+err.Error())
		}
		return m, nil
	}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, outputInvalid("", fmt.Sprintf("$DESKRUN_OUTPUT line %d is not name=value", i+1))
		}
		vals[k] = textValue(v)
	}
	return vals, nil
}

// textValue marks a value that came as text, to be read after its type.
type textValue string

func checkOutputs(raw map[string]any, decls []wire.OutputDecl) (map[string]any, *deskrun.Error) {
	declared := map[string]wire.OutputDecl{}
	for _, d := range decls {
		declared[d.Name] = d
	}
	out := map[string]any{}
	var problems []string
	first := ""
	bad := func(name, msg string) {
		if first == "" {
			first = name
		}
		problems = append(problems, msg)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := raw[k]
		d, ok := declared[k]
		if !ok {
			bad(k, fmt.Sprintf("%q is not a declared output", k))
			continue
		}
		if v == nil {
			continue // null: not given
		}
		val, err := typed(v, d.Type)
		if err != nil {
			bad(k, fmt.Sprintf("output %q must be a %s: %v", k, d.Type, err))
			continue
		}
		out[k] = val
	}
	for _, d := range decls {
		if _, ok := out[d.Name]; !ok && d.Required && raw[d.Name] == nil {
			bad(d.Name, fmt.Sprintf("required output %q is missing", d.Name))
		}
	}
	if len(problems) > 0 {
		return nil, outputInvalid(first, "the flow's outputs do not match its declaration: "+strings.Join(problems, "; "))
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func typed(v any, t string) (any, error) {
	if s, ok := v.(textValue); ok {
		switch t {
		case "number":
			f, err := strconv.ParseFloat(strings.TrimSpace(string(s)), 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not a number", string(s))
			}
			return f, nil
		case "boolean":
			b, err := strconv.ParseBool(strings.TrimSpace(string(s)))
			if err != nil {
				return nil, fmt.Errorf("%q is not true or false", string(s))
			}
			return b, nil
		}
		return string(s), nil
	}
	switch t {
	case "number":
		if f, ok := v.(float64); ok {
			return f, nil
		}
	case "boolean":
		if b, ok := v.(bool); ok {
			return b, nil
		}
	default:
		if s, ok := v.(string); ok {
			return s, nil
		}
	}
	return nil, fmt.Errorf("got %s", jsonKind(v))
}

func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func lastFew(lines []string, n, maxLen int) string {
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	s := strings.Join(lines, " | ")
	if len(s) > maxLen {
		s = "…" + s[len(s)-maxLen:]
	}
	return s
}

// fetchPackage downloads a package by digest: GET
// /api/v1/agent/packages/{digest} over the pinned TLS, signed with the
// machine's key (wire.PackageAuthMessage).
func (a *Agent) fetchPackage(ctx context.Context, digest string) ([]byte, error) {
	if a.FetchPackage != nil {
		return a.FetchPackage(ctx, digest)
	}
	u, err := url.Parse(a.id.ServerURL)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := pki.PoolConfig(a.id.CAPEM, u.Hostname())
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		strings.TrimSuffix(a.id.ServerURL, "/")+"/api/v1/agent/packages/"+url.PathEscape(digest), nil)
	if err != nil {
		return nil, err
	}
	now := time.Now().Unix()
	req.Header.Set("X-Deskrun-Machine", a.id.MachineID)
	req.Header.Set("X-Deskrun-Time", strconv.FormatInt(now, 10))
	req.Header.Set("X-Deskrun-Signature", base64.StdEncoding.EncodeToString(
		ed25519.Sign(a.id.SigningKey, wire.PackageAuthMessage(a.id.MachineID, digest, now))))
	tr := &http.Transport{TLSClientConfig: tlsCfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Minute}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, cancelledError()
		}
		return nil, &deskrun.Error{Code: deskrun.CodeUnavailable, Retryable: true, Message: "could not download the flow's package: " + err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		e := wire.DecodeError(resp.StatusCode, "GET package "+digest, b)
		if e.Code == deskrun.CodeInternal {
			// Not an envelope (a proxy's answer): worth another try later.
			e.Code, e.Retryable = deskrun.CodeUnavailable, resp.StatusCode >= 500
		}
		return nil, e
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, desktopflow.MaxPackageBytes+1))
	if err != nil {
		return nil, &deskrun.Error{Code: deskrun.CodeUnavailable, Retryable: true, Message: "could not download the flow's package: " + err.Error()}
	}
	if len(b) > desktopflow.MaxPackageBytes {
		return nil, &deskrun.Error{Code: deskrun.CodeDesktopFlowPackageTooLarge, Message: fmt.Sprintf("the package is larger than %d MiB", desktopflow.MaxPackageBytes>>20)}
	}
	return b, nil
}

// logShipper streams a run's output to the server as log frames, with
// bounded memory: at most one pending chunk per stream plus logQueueLen
// chunks waiting for the connection. Writers block while the queue is
// full, which blocks the flow on its full pipe: a slow connection slows
// the flow instead of growing the agent. It keeps the last lines for
// DesktopFlowFailed.
type logShipper struct {
	jobID string
	send  func(*wire.Frame)
	queue chan *wire.LogChunk
	sent  chan struct{}
	stop  chan struct{}
	tick  chan struct{}

	pushMu sync.Mutex // held while a chunk is numbered and queued: Seq order is send order
	mu     sync.Mutex
	seq    int64
	buf    map[string][]byte
	ring   lineRing
	closed bool
}

func newLogShipper(jobID string, send func(*wire.Frame)) *logShipper {
	s := &logShipper{jobID: jobID, send: send, queue: make(chan *wire.LogChunk, logQueueLen),
		sent: make(chan struct{}), stop: make(chan struct{}), tick: make(chan struct{}),
		buf: map[string][]byte{}, ring: lineRing{partial: map[string][]byte{}}}
	go func() {
		defer close(s.sent)
		for c := range s.queue {
			s.send(&wire.Frame{Type: wire.FrameLog, Log: c})
		}
	}()
	go func() {
		defer close(s.tick)
		t := time.NewTicker(logFlushEvery)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.flush()
			}
		}
	}()
	return s
}

type streamWriter struct {
	s      *logShipper
	stream string
}

func (s *logShipper) writer(stream string) io.Writer { return streamWriter{s, stream} }

func (w streamWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), logChunkBytes)
		w.s.add(w.stream, p[:k])
		p = p[k:]
	}
	return n, nil
}

func (s *logShipper) add(stream string, p []byte) {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.ring.write(stream, p)
	s.buf[stream] = append(s.buf[stream], p...)
	var c *wire.LogChunk
	if len(s.buf[stream]) >= logChunkBytes {
		c = s.take(stream)
	}
	s.mu.Unlock()
	if c != nil {
		s.queue <- c // blocks while the connection is behind
	}
}

func (s *logShipper) take(stream string) *wire.LogChunk {
	s.seq++
	c := &wire.LogChunk{ID: s.jobID, Seq: s.seq, Stream: stream, Data: s.buf[stream]}
	s.buf[stream] = nil
	return c
}

func (s *logShipper) flush() {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	var cs []*wire.LogChunk
	s.mu.Lock()
	for _, stream := range []string{"stdout", "stderr"} {
		if len(s.buf[stream]) > 0 {
			cs = append(cs, s.take(stream))
		}
	}
	s.mu.Unlock()
	for _, c := range cs {
		s.queue <- c
	}
}

// close sends what is pending and waits until every chunk went out.
func (s *logShipper) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	close(s.stop)
	<-s.tick
	s.flush()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	close(s.queue)
	<-s.sent
}

func (s *logShipper) lastLines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ring.snapshot()
}

// lineRing keeps the last lastLinesKept lines of output (both streams),
// each cut at maxLineBytes. It looks only at the last lines of each write,
// so a flow printing millions of lines costs nothing per line.
type lineRing struct {
	lines   []string
	partial map[string][]byte // the unfinished last line of each stream
}

func (r *lineRing) write(stream string, p []byte) {
	nl := bytes.LastIndexByte(p, '\n')
	if nl < 0 {
		r.partial[stream] = appendCapped(r.partial[stream], p)
		return
	}
	var rev [][]byte
	end, reachedStart := nl, false
	for len(rev) < lastLinesKept {
		i := bytes.LastIndexByte(p[:end], '\n')
		if i < 0 {
			reachedStart = true
			break
		}
		rev = append(rev, p[i+1:end])
		end = i
	}
	if reachedStart {
		r.push(appendCapped(r.partial[stream], p[:end]))
	}
	for i := len(rev) - 1; i >= 0; i-- {
		r.push(appendCapped(nil, rev[i]))
	}
	r.partial[stream] = appendCapped(nil, p[nl+1:])
}

func appendCapped(dst, p []byte) []byte {
	if room := maxLineBytes - len(dst); room < len(p) {
		p = p[:max(room, 0)]
	}
	return append(dst, p...)
}

func (r *lineRing) push(line []byte) {
	s := strings.TrimSuffix(string(line), "\r")
	r.lines = append(r.lines, s)
	if len(r.lines) > lastLinesKept {
		r.lines = append(r.lines[:0:0], r.lines[len(r.lines)-lastLinesKept:]...)
	}
}

func (r *lineRing) snapshot() []string {
	out := append([]string(nil), r.lines...)
	for _, stream := range []string{"stdout", "stderr"} {
		if len(r.partial[stream]) > 0 {
			out = append(out, string(r.partial[stream]))
		}
	}
	if len(out) > lastLinesKept {
		out = out[len(out)-lastLinesKept:]
	}
	return out
}
