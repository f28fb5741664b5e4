package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/runas"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/wire"
)

// Executor runs one kind of job. progress may be called any number of
// times. The returned error should be a *deskrun.Error; an output returned
// along with an error is sent with it (a failed desktop flow still has an
// exit code, its last lines and a screenshot). ctx carries the job's id
// for frames that name it (log frames).
type Executor func(ctx context.Context, payload json.RawMessage, progress func(string)) (json.RawMessage, error)

// Agent connects to its server and runs jobs.
type Agent struct {
	StateDir  string
	Log       *slog.Logger
	Info      wire.MachineInfo
	Executors map[string]Executor
	// MinBackoff and MaxBackoff bound the reconnect delay (jittered).
	MinBackoff, MaxBackoff time.Duration
	// ProtocolVersion overrides the version sent in the hello (tests of
	// old agents); 0 means wire.ProtocolVersion.
	ProtocolVersion int
	// OnConnected is called after each successful handshake (tests, dev).
	OnConnected func()
	// Logon logs users on for "validate" and "desktop" jobs: the PAM
	// provider on Linux. Nil: such jobs fail with LogonProviderUnavailable.
	Logon identity.Provider
	// FetchPackage, if set, replaces the signed HTTPS download of a desktop
	// flow's package by digest (tests).
	FetchPackage func(ctx context.Context, digest string) ([]byte, error)
	// ReaperExecutable is the deskrun binary the reaper (ReapRuns) is
	// started from; empty means this process's binary.
	ReaperExecutable string
	// ReapRuns starts the reaper (runas.Reaper), a root helper that kills
	// the runs' processes if the agent dies. The CLI sets it; an agent
	// inside a test binary must not, since the helper re-executes the
	// binary.
	ReapRuns bool
	// RunsDir holds the desktop runs' working directories; empty means
	// STATE/runs when the runs' users can reach it, else
	// /var/lib/deskrun/runs. It must be root's and writable only by root.
	RunsDir string

	// Doctor runs the machine-wide doctor checks (doctor.Run: the CLI sets
	// it; this package cannot import doctor, which reads the agent's
	// directory config). The agent sends the report after each handshake
	// and then every DoctorEvery (default an hour); DoctorTimeout (default
	// 5s) bounds each run, and a run that overruns sends nothing. Nil: no
	// reports.
	Doctor        func(ctx context.Context) deskrun.DoctorReport
	DoctorEvery   time.Duration
	DoctorTimeout time.Duration

	// sendFrame, if set, replaces sendIfConnected for log frames (tests).
	sendFrame func(*wire.Frame)

	id         *Identity
	sealPublic []byte
	reaper     *runas.Reaper
	guard      credentialGuard

	mu   sync.Mutex
	conn *websocket.Conn
	// up is closed when a connection is established, and replaced by an
	// open channel when it ends (at downSince): sendReliably waits on it.
	up        chan struct{}
	downSince time.Time
	running   map[string]context.CancelFunc
}

// DefaultExecutors are the built-in job kinds.
func DefaultExecutors() map[string]Executor {
	return map[string]Executor{
		deskrun.JobNoop: func(context.Context, json.RawMessage, func(string)) (json.RawMessage, error) {
			return json.RawMessage(`{"ok":true}`), nil
		},
		deskrun.JobSleep: func(ctx context.Context, p json.RawMessage, progress func(string)) (json.RawMessage, error) {
			var in struct {
				MS int `json:"ms"`
			}
			if len(p) > 0 {
				if err := json.Unmarshal(p, &in); err != nil {
					return nil, &deskrun.Error{Code: deskrun.CodeInvalid, Message: "sleep payload must be {\"ms\": N}"}
				}
			}
			progress(fmt.Sprintf("sleeping %d ms", in.MS))
			select {
			case <-time.After(time.Duration(in.MS) * time.Millisecond):
				return json.RawMessage(fmt.Sprintf(`{"slept_ms":%d}`, in.MS)), nil
			case <-ctx.Done():
				return nil, &deskrun.Error{Code: deskrun.CodeJobCancelled, Message: "the job was cancelled"}
			}
		},
	}
}

// FatalError ends Run: retrying cannot help until someone acts.
type FatalError struct{ Err *deskrun.Error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

// Run connects and reconnects until ctx ends or the server refuses the
// agent for good (unknown machine, protocol too old).
func (a *Agent) Run(ctx context.Context) error {
	id, err := LoadIdentity(a.StateDir)
	if err != nil {
		return err
	}
	a.id = id
	if a.sealPublic, err = seal.PublicKeyOf(id.SealKey); err != nil {
		return err
	}
	if a.Executors == nil {
		a.Executors = DefaultExecutors()
	}
	if a.ReapRuns && os.Geteuid() == 0 {
		// Runs die with the agent, even on kill -9: see runas.Reaper.
		if r, err := runas.StartReaper(a.ReaperExecutable); err != nil {
			a.Log.Warn("no reaper: a run's processes would outlive a killed agent", "err", err)
		} else {
			a.reaper = r
			defer r.Close()
		}
	}
	if _, ok := a.Executors[deskrun.JobValidate]; !ok {
		a.Executors[deskrun.JobValidate] = a.validate
	}
	if _, ok := a.Executors[wire.JobDesktop]; !ok {
		a.Executors[wire.JobDesktop] = a.desktopRun
	}
	if a.MinBackoff == 0 {
		a.MinBackoff = 200 * time.Millisecond
	}
	if a.MaxBackoff == 0 {
		a.MaxBackoff = 30 * time.Second
	}
	a.running = map[string]context.CancelFunc{}
	a.up, a.downSince = make(chan struct{}), time.Now()
	backoff := a.MinBackoff
	for {
		connected, err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var fe *FatalError
		if errors.As(err, &fe) {
			a.Log.Error("server refused the agent", "code", fe.Err.Code, "message", fe.Err.Message, "resolution", fe.Err.Resolution)
			return fe.Err
		}
		if connected {
			backoff = a.MinBackoff
		}
		// Full jitter: a fleet reconnecting after a server restart spreads
		// out instead of stampeding.
		d := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		a.Log.Info("agent disconnected; reconnecting", "err", err, "in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		backoff = min(backoff*2, a.MaxBackoff)
	}
}

// session runs one connection; connected says whether the handshake
// succeeded.
func (a *Agent) session(ctx context.Context) (connected bool, err error) {
	u, err := url.Parse(a.id.ServerURL)
	if err != nil {
		return false, err
	}
	tlsCfg, err := pki.PoolConfig(a.id.CAPEM, u.Hostname())
	if err != nil {
		return false, err
	}
	wsURL := "wss://" + u.Host + "/api/v1/agent/connect"
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	ws, resp, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}},
		CompressionMode: websocket.CompressionDisabled,
	})
	cancel()
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if strings.Contains(err.Error(), "certificate") {
			return false, &FatalError{Err: untrusted(a.id.ServerURL).(*deskrun.Error)}
		}
		return false, fmt.Errorf("dial: %w", err)
	}
	ws.SetReadLimit(64 << 20)
	defer ws.CloseNow()

	// Handshake: challenge → hello → welcome (or error).
	f, err := readFrame(ctx, ws)
	if err != nil {
		return false, fmt.Errorf("read challenge: %w", err)
	}
	if f.Type != wire.FrameChallenge || f.Challenge == nil {
		return false, fmt.Errorf("expected a challenge, got %q", f.Type)
	}
	pv := a.protocol()
	info := a.Info
	info.ProtocolVersion = pv
	hello := &wire.Hello{
		MachineID: a.id.MachineID, ProtocolVersion: pv, Info: info,
		Signature: signAuth(a.id, f.Challenge.Nonce), Held: a.held(),
	}
	if err := writeFrame(ctx, ws, &wire.Frame{Type: wire.FrameHello, Hello: hello}); err != nil {
		return false, err
	}
	f, err = readFrame(ctx, ws)
	if err != nil {
		return false, fmt.Errorf("read welcome: %w", err)
	}
	if f.Type == wire.FrameError && f.Error != nil {
		switch f.Error.Code {
		case deskrun.CodeAgentProtocolTooOld, deskrun.CodeAgentAuthFailed:
			return false, &FatalError{Err: f.Error}
		}
		return false, f.Error
	}
	if f.Type != wire.FrameWelcome || f.Welcome == nil {
		return false, fmt.Errorf("expected welcome, got %q", f.Type)
	}
	a.Log.Info("agent connected", "server", a.id.ServerURL, "machine", a.id.Name)
	if a.OnConnected != nil {
		a.OnConnected()
	}

	s := &session{a: a, ws: ws, ctx: ctx}
	a.mu.Lock()
	a.conn = ws
	if a.up != nil {
		close(a.up)
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.conn = nil
		a.up, a.downSince = make(chan struct{}), time.Now()
		a.mu.Unlock()
	}()

	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go s.heartbeat(hbCtx, f.Welcome.HeartbeatEvery())
	if a.Doctor != nil && pv >= wire.DoctorProtocolVersion {
		go s.doctor(hbCtx)
	}

	for {
		f, err := readFrame(ctx, ws)
		if err != nil {
			return true, err
		}
		s.handle(f)
	}
}

type session struct {
	a   *Agent
	ws  *websocket.Conn
	ctx context.Context
}

func (s *session) send(f *wire.Frame) error {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	return writeFrame(ctx, s.ws, f)
}

func (s *session) heartbeat(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = 10 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.send(&wire.Frame{Type: wire.FrameHeartbeat}); err != nil {
				return
			}
		}
	}
}

// doctor sends the doctor report now and then every DoctorEvery, until
// the session ends.
func (s *session) doctor(ctx context.Context) {
	every, timeout := s.a.DoctorEvery, s.a.DoctorTimeout
	if every <= 0 {
		every = time.Hour
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if r := s.a.runDoctor(ctx, timeout); r != nil {
			if err := s.send(&wire.Frame{Type: wire.FrameDoctor, Doctor: r}); err != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runDoctor runs the checks within timeout; nil if they overran (they
// are abandoned: each network check has its own, shorter bound).
func (a *Agent) runDoctor(ctx context.Context, timeout time.Duration) *deskrun.DoctorReport {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan deskrun.DoctorReport, 1)
	go func() { done <- a.Doctor(rctx) }()
	select {
	case r := <-done:
		if rctx.Err() != nil && ctx.Err() == nil {
			a.Log.Warn("doctor report ran out of time; its network checks may say so", "timeout", timeout)
		}
		return &r
	case <-ctx.Done():
		return nil
	case <-time.After(timeout + time.Second):
		a.Log.Warn("doctor report took too long: not sent", "timeout", timeout)
		return nil
	}
}

func (s *session) handle(f *wire.Frame) {
	a := s.a
	switch f.Type {
	case wire.FrameJob:
		if f.Job != nil {
			a.accept(s, f.Job)
		}
	case wire.FrameResultAck:
		a.forget(f.ID)
	case wire.FrameCancel:
		a.mu.Lock()
		cancel := a.running[f.ID]
		a.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	default:
		a.Log.Warn("unknown frame from server", "type", f.Type)
	}
}

// heldJob is a job's record in the state directory's jobs/ outbox.
type heldJob struct {
	Job    wire.JobPush    `json:"job"`
	Result *wire.JobResult `json:"result,omitempty"`
}

func (a *Agent) jobPath(id string) string {
	return filepath.Join(a.StateDir, jobsDir, filepath.Base(id)+".json")
}

// accept records the job, acknowledges it and runs it. A job already held
// (a re-push after a lost ack) is not started twice.
func (a *Agent) accept(s *session, j *wire.JobPush) {
	a.mu.Lock()
	if _, dup := a.running[j.ID]; dup {
		a.mu.Unlock()
		_ = s.send(&wire.Frame{Type: wire.FrameAck, ID: j.ID})
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(s.ctx))
	a.running[j.ID] = cancel
	a.mu.Unlock()
	b, _ := json.Marshal(heldJob{Job: *j})
	if err := writeFileAtomic(a.jobPath(j.ID), b); err != nil {
		a.Log.Error("record job", "job_id", j.ID, "err", err)
	}
	_ = s.send(&wire.Frame{Type: wire.FrameAck, ID: j.ID})
	go a.execute(ctx, cancel, j)
}

func (a *Agent) execute(ctx context.Context, cancel context.CancelFunc, j *wire.JobPush) {
	defer cancel()
	res := &wire.JobResult{ID: j.ID}
	ex := a.Executors[j.Kind]
	if ex == nil {
		res.Error = &deskrun.Error{Code: deskrun.CodeInvalid, Message: fmt.Sprintf("this agent (version %s) does not know job kind %q", Version, j.Kind),
			Resolution: "Upgrade the agent to the server's version."}
	} else {
		progress := func(msg string) {
			a.sendIfConnected(&wire.Frame{Type: wire.FrameProgress, Progress: &wire.JobProgress{ID: j.ID, Message: msg}})
		}
		out, err := ex(withJobID(ctx, j.ID), j.Payload, progress)
		if err != nil {
			var de *deskrun.Error
			if !errors.As(err, &de) {
				de = &deskrun.Error{Code: deskrun.CodeInternal, Message: err.Error()}
			}
			// An executor may return an output with its error (a desktop
			// flow that failed still has an exit code, last lines and a
			// screenshot); the server stores both.
			res.Error, res.Output = de, out
		} else {
			res.OK, res.Output = true, out
		}
	}
	b, _ := json.Marshal(heldJob{Job: *j, Result: res})
	if err := writeFileAtomic(a.jobPath(j.ID), b); err != nil {
		a.Log.Error("record job result", "job_id", j.ID, "err", err)
	}
	a.mu.Lock()
	delete(a.running, j.ID)
	a.mu.Unlock()
	a.sendIfConnected(&wire.Frame{Type: wire.FrameResult, Result: res})
}

func (a *Agent) sendIfConnected(f *wire.Frame) {
	a.mu.Lock()
	ws := a.conn
	a.mu.Unlock()
	if ws == nil {
		return // the result stays on disk and goes out in the next hello
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = writeFrame(ctx, ws, f)
}

// reconnectWait bounds how long sendReliably waits for the server.
const reconnectWait = 2 * time.Minute

// sendReliably sends a frame, waiting for the connection to come back when
// it is down or the write fails (up to reconnectWait, then the frame is
// dropped). A run's log chunks go this way: output written while the
// server restarts is delivered after it, and a chunk sent twice is stored
// once (the server keys chunks by sequence number).
func (a *Agent) sendReliably(f *wire.Frame) {
	for {
		a.mu.Lock()
		ws, up, down := a.conn, a.up, a.downSince
		a.mu.Unlock()
		if ws != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := writeFrame(ctx, ws, f)
			cancel()
			if err == nil {
				return
			}
			up, down = nil, time.Now() // this connection is dying: wait for the next one
		}
		// The wait is counted from when the connection went down, so once
		// it has passed, later frames are dropped at once, not each after
		// a wait of its own.
		left := time.Until(down.Add(reconnectWait))
		if left <= 0 {
			return
		}
		var retry <-chan time.Time
		if up == nil {
			retry = time.After(100 * time.Millisecond)
		}
		select {
		case <-up:
		case <-retry:
		case <-time.After(left):
			a.Log.Warn("run output dropped: the server was unreachable", "for", reconnectWait)
		}
	}
}

// forget drops a job whose result the server has recorded.
func (a *Agent) forget(id string) {
	if err := os.Remove(a.jobPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.Log.Error("forget job", "job_id", id, "err", err)
	}
}

// held lists the jobs in the outbox for the hello.
func (a *Agent) held() []wire.HeldJob {
	entries, _ := os.ReadDir(filepath.Join(a.StateDir, jobsDir))
	var out []wire.HeldJob
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(a.StateDir, jobsDir, e.Name()))
		if err != nil {
			continue
		}
		var hj heldJob
		if json.Unmarshal(b, &hj) != nil {
			continue
		}
		a.mu.Lock()
		_, live := a.running[hj.Job.ID]
		a.mu.Unlock()
		if hj.Result == nil && !live {
			// Started by an earlier agent process that died: its processes
			// died with it. Report it lost rather than pretend it runs.
			hj.Result = &wire.JobResult{ID: hj.Job.ID, Error: &deskrun.Error{Code: deskrun.CodeAgentLost,
				Message: "the agent restarted while running the job; the job's processes ended with it"}}
		}
		out = append(out, wire.HeldJob{ID: hj.Job.ID, Result: hj.Result})
	}
	return out
}

func signAuth(id *Identity, nonce []byte) []byte {
	return ed25519.Sign(id.SigningKey, wire.AuthMessage(id.MachineID, nonce))
}

func readFrame(ctx context.Context, ws *websocket.Conn) (*wire.Frame, error) {
	_, b, err := ws.Read(ctx)
	if err != nil {
		return nil, err
	}
	var f wire.Frame
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("malformed frame: %w", err)
	}
	return &f, nil
}

// writeFrame sends one frame; coder/websocket allows concurrent writers.
func writeFrame(ctx context.Context, ws *websocket.Conn, f *wire.Frame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return ws.Write(ctx, websocket.MessageText, b)
}
