package bench

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
	_ "modernc.org/sqlite" // the store's driver

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/wire"
)

// The limits: what the parts every product figure is made of cost on
// this machine at best, measured alone. Each is a LimitCase name.
const (
	// A one-row INSERT in its own transaction, committed, on a SQLite
	// file opened like the store's writer (WAL, BEGIN IMMEDIATE), with
	// synchronous FULL (the default: one fsync per commit) or NORMAL.
	LimitSQLiteFull   = "sqlite_commit_full"
	LimitSQLiteNormal = "sqlite_commit_normal"
	// fork/exec of /bin/true and Wait, as root, and with
	// SysProcAttr.Credential set to a real user (setgroups, setgid,
	// setuid in the child). Root only.
	LimitSpawn       = "spawn"
	LimitSpawnSetuid = "spawn_setuid"
	// A job frame pushed over a TLS WebSocket (coder/websocket, as the
	// hub and the agent use it) on 127.0.0.1 and the ack back, both ends
	// in this process, JSON encoded and decoded on each side.
	LimitWSRTT = "ws_rtt"
	// A raw PAM logon (msteinert/pam: start, authenticate, acct_mgmt,
	// end) through deskrun's interactive service on a private stack, of a
	// user whose password is hashed with SHA-512 or yescrypt. Root only.
	LimitPAMSHA512   = "pam_sha512"
	LimitPAMYescrypt = "pam_yescrypt"
)

// LimitSQLiteCommit stands in a Comparison for the commit of the SQLite
// synchronous mode the product figure was measured with: LimitSQLiteFull
// or LimitSQLiteNormal.
const LimitSQLiteCommit = "sqlite_commit"

// LimitsOptions configure the limits scenario.
type LimitsOptions struct {
	// N timed iterations per case, after Warmup untimed ones.
	N, Warmup int
	// Data is the directory of the SQLite files; empty means a temporary
	// one, removed afterwards. Its file system decides what an fsync
	// costs: give the product scenarios' --data to compare like with like.
	Data string
	// Progress, if set, receives one line per case.
	Progress io.Writer
}

// LimitCase is one measured limit.
type LimitCase struct {
	Name    string      `json:"name"`
	Latency Percentiles `json:"latency"`
	// PerSecond is N ÷ the wall time of the N sequential iterations
	// (commits/s for SQLite).
	PerSecond float64 `json:"per_second,omitempty"`
	// Skipped says why the case did not run (not root, no cgo); Latency
	// is then empty.
	Skipped string `json:"skipped,omitempty"`
}

// SpawnProof is what a child started like the setuid spawn case's
// /bin/true printed with id: the proof that the case measured a spawn
// that really changed user.
type SpawnProof struct {
	User   string   `json:"user"`
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups"`
	// Child is `id -u`, `id -g` and `id -G` of the child, space separated.
	Child string `json:"child"`
}

// LimitsResult is what the limits scenario measured.
type LimitsResult struct {
	N int `json:"n"`
	// LoadAvg is /proc/loadavg when the scenario started: the noise.
	LoadAvg string      `json:"loadavg"`
	Cases   []LimitCase `json:"cases"`
	// Spawn is set when the setuid spawn case ran.
	Spawn *SpawnProof `json:"spawn,omitempty"`
}

// Case returns the case of that name.
func (r *LimitsResult) Case(name string) (LimitCase, bool) {
	for _, c := range r.Cases {
		if c.Name == name {
			return c, true
		}
	}
	return LimitCase{}, false
}

// LimitTerm is Count times the p50 of one limit case.
type LimitTerm struct {
	Case  string `json:"case"` // a Limit… name, or LimitSQLiteCommit
	Count int    `json:"count"`
}

// Comparison says which limits a product figure cannot beat: the sum of
// its terms' p50s. A report prints the figure as Ratio(figure, limit).
type Comparison struct {
	// Scenario and Figure name the product figure as `deskrun bench
	// --scenario Scenario` prints it.
	Scenario string      `json:"scenario"`
	Figure   string      `json:"figure"`
	Limit    []LimitTerm `json:"limit"`
	// Why: what the figure does that the terms stand for, and what it
	// does on top of them.
	Why string `json:"why"`
}

// Comparisons pairs product figures with their limits. The terms are a
// floor, not a model: what a figure does besides them (HTTPS requests,
// SQLite reads, the agent's files) is its overhead.
var Comparisons = []Comparison{
	{Scenario: "roundtrip", Figure: "server p50",
		Limit: []LimitTerm{{LimitWSRTT, 1}, {LimitSQLiteCommit, 2}},
		Why:   "created_at → finished_at of a no-op job: the insert's commit, the push and the agent's answer over the WebSocket, the result's commit (a job that ends at once is not acked)"},
	{Scenario: "run", Figure: "queue p50",
		Limit: []LimitTerm{{LimitSQLiteCommit, 1}},
		Why:   "created_at → assigned_at: the run's insert is committed before the scheduler's pass"},
	{Scenario: "run", Figure: "push p50",
		Limit: []LimitTerm{{LimitWSRTT, 1}, {LimitSQLiteCommit, 2}},
		Why:   "assigned_at → logon_at: the run's update and the job's insert, each committed, the push, the agent's progress frame back"},
	{Scenario: "run", Figure: "sha512 logon p50",
		Limit: []LimitTerm{{LimitPAMSHA512, 1}},
		Why:   "the agent's logon adds unsealing the password, open_session and the NSS lookups to the raw PAM calls"},
	{Scenario: "run", Figure: "yescrypt logon p50",
		Limit: []LimitTerm{{LimitPAMYescrypt, 1}},
		Why:   "as sha512, with the yescrypt hash dominating both"},
	{Scenario: "run", Figure: "spawn p50",
		Limit: []LimitTerm{{LimitSpawnSetuid, 1}},
		Why:   "runas forks into the run's cgroup, drops to the user and stops the child at its exec so the agent can check its credentials from /proc before letting it run: the limit is the same fork/exec without the cgroup and the check"},
	{Scenario: "run", Figure: "sha512 without logon p50",
		Limit: []LimitTerm{{LimitSQLiteCommit, 3}, {LimitWSRTT, 1}, {LimitSpawnSetuid, 1}},
		Why:   "trigger → first command, less the logon: three commits (run insert, run update, job insert), one push and answer, one spawn as the user; plus the HTTPS request and dash starting date"},
	{Scenario: "flow", Figure: "cloud-flow layer p50",
		Limit: []LimitTerm{{LimitSQLiteCommit, 3}},
		Why:   "what a webhook adds to a direct run: the delivery and flow-run insert, the admission update and the step, each committed"},
}

// Limit sums the p50s of c's terms. sqliteSync (FULL or NORMAL, empty
// is FULL) is the mode the product figure was measured with. It fails
// if a term's case was skipped or not measured.
func (r *LimitsResult) Limit(c Comparison, sqliteSync string) (time.Duration, error) {
	var sum time.Duration
	for _, t := range c.Limit {
		name := t.Case
		if name == LimitSQLiteCommit {
			name = LimitSQLiteFull
			if strings.EqualFold(sqliteSync, "NORMAL") {
				name = LimitSQLiteNormal
			}
		}
		lc, ok := r.Case(name)
		switch {
		case !ok:
			return 0, fmt.Errorf("limit %s not measured", name)
		case lc.Skipped != "":
			return 0, fmt.Errorf("limit %s skipped: %s", name, lc.Skipped)
		}
		sum += time.Duration(t.Count) * lc.Latency.P50
	}
	return sum, nil
}

// Ratio is measured ÷ limit: how many times its limit a product figure
// is. It is 0 when there is no limit (limit ≤ 0).
func Ratio(measured, limit time.Duration) float64 {
	if limit <= 0 {
		return 0
	}
	return float64(measured) / float64(limit)
}

// Limits measures the limits, each case o.N times in a row. The root-only
// cases are skipped, with the reason in the result, when not root.
func Limits(ctx context.Context, o LimitsOptions) (_ *LimitsResult, err error) {
	if o.N <= 0 {
		return nil, errors.New("limits: N must be positive")
	}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	res := &LimitsResult{N: o.N}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAvg = strings.TrimSpace(string(b))
	}
	tmp, err := os.MkdirTemp("", "deskrun-bench-limits-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	data := o.Data
	if data == "" {
		data = tmp
	}
	add := func(name string, f func() error) error {
		c, err := timeCase(ctx, name, o.N, o.Warmup, f)
		if err != nil {
			return fmt.Errorf("limit %s: %w", name, err)
		}
		res.Cases = append(res.Cases, c)
		progress("%-20s %s", name, c.Latency)
		return nil
	}
	skip := func(name, why string) {
		res.Cases = append(res.Cases, LimitCase{Name: name, Skipped: why})
		progress("%-20s skipped: %s", name, why)
	}

	for _, c := range []struct{ name, sync string }{{LimitSQLiteFull, "FULL"}, {LimitSQLiteNormal, "NORMAL"}} {
		commit, closeDB, err := sqliteCommitter(ctx, filepath.Join(data, "limits-"+strings.ToLower(c.sync)+".db"), c.sync)
		if err != nil {
			return nil, err
		}
		err = add(c.name, commit)
		closeDB()
		if err != nil {
			return nil, err
		}
	}

	rtt, closeWS, err := wsEcho(ctx, tmp)
	if err != nil {
		return nil, fmt.Errorf("limit %s: %w", LimitWSRTT, err)
	}
	err = add(LimitWSRTT, rtt)
	closeWS()
	if err != nil {
		return nil, err
	}

	rootOnly := []string{LimitSpawn, LimitSpawnSetuid, LimitPAMSHA512, LimitPAMYescrypt}
	if os.Geteuid() != 0 {
		for _, name := range rootOnly {
			skip(name, "needs root: it spawns as another user, creates local users and reads their shadow entries")
		}
		return res, nil
	}
	if err := add(LimitSpawn, func() error { return exec.Command("/bin/true").Run() }); err != nil {
		return nil, err
	}

	users, err := createUsers(ctx, []string{HashSHA512, HashYescrypt})
	defer func() {
		if derr := deleteUsers(users); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	if err != nil {
		return nil, err
	}
	cred, proof, err := credentialOf(users[0])
	if err != nil {
		return nil, err
	}
	if err := proveSpawn(cred, proof); err != nil {
		return nil, fmt.Errorf("limit %s: %w", LimitSpawnSetuid, err)
	}
	res.Spawn = proof
	if err := add(LimitSpawnSetuid, func() error {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd.Run()
	}); err != nil {
		return nil, err
	}

	logon, why, err := rawPAM(filepath.Join(tmp, "pam"))
	if err != nil {
		return nil, err
	}
	if logon == nil {
		skip(LimitPAMSHA512, why)
		skip(LimitPAMYescrypt, why)
		return res, nil
	}
	for i, name := range []string{LimitPAMSHA512, LimitPAMYescrypt} {
		if err := add(name, func() error { return logon(users[i], benchPassword) }); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// timeCase runs f warmup times, then n times timed, one after another.
func timeCase(ctx context.Context, name string, n, warmup int, f func() error) (LimitCase, error) {
	for range warmup {
		if err := f(); err != nil {
			return LimitCase{}, err
		}
	}
	ds := make([]time.Duration, 0, n)
	t0 := time.Now()
	for range n {
		if err := ctx.Err(); err != nil {
			return LimitCase{}, err
		}
		t := time.Now()
		if err := f(); err != nil {
			return LimitCase{}, err
		}
		ds = append(ds, time.Since(t))
	}
	wall := time.Since(t0)
	return LimitCase{Name: name, Latency: Summarize(ds), PerSecond: float64(n) / wall.Seconds()}, nil
}

// sqliteCommitter opens path as store/sqlite.Open opens its writer: the
// same driver, pragmas and DSN (busy_timeout 5 s, foreign keys, the
// synchronous mode, WAL; transactions BEGIN IMMEDIATE; one connection),
// and returns a function that commits one INSERT in its own transaction.
// Keep the DSN in step with openPool in internal/store/sqlite.
func sqliteCommitter(ctx context.Context, path, synchronous string) (commit func() error, closeDB func(), err error) {
	dsn := path + "?_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(" + synchronous +
		")&_pragma=journal_mode(WAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	closeDB = func() {
		db.Close()
		for _, suffix := range []string{"", "-wal", "-shm"} {
			os.Remove(path + suffix)
		}
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		closeDB()
		return nil, nil, fmt.Errorf("open sqlite %s: journal mode %q: %v", path, mode, err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS limits (id INTEGER PRIMARY KEY, note TEXT NOT NULL)"); err != nil {
		closeDB()
		return nil, nil, err
	}
	// Prepared once: the limit is the cheapest commit of a row.
	insert, err := db.PrepareContext(ctx, "INSERT INTO limits (note) VALUES (?)")
	if err != nil {
		closeDB()
		return nil, nil, err
	}
	commit = func() error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.StmtContext(ctx, insert).ExecContext(ctx, "one small row"); err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	}
	return commit, closeDB, nil
}

// wsEcho serves a WebSocket over TLS on 127.0.0.1 with a certificate
// from pki (as the server does) and connects to it with the agent's
// dial options. The returned function pushes a job frame from the
// serving side (as the hub does) and waits for the client's ack (as the
// agent sends it), each side encoding and decoding JSON.
func wsEcho(ctx context.Context, dir string) (rtt func() error, closeWS func(), err error) {
	id, err := pki.Ensure(filepath.Join(dir, "tls"), nil, time.Now())
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	accepted := make(chan *websocket.Conn, 1)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
			if err != nil {
				return
			}
			accepted <- ws // hijacked: it outlives the handler, as in the hub
		}),
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{id.Cert}, NextProtos: []string{"h2", "http/1.1"}},
	}
	go srv.ServeTLS(ln, "", "")
	tlsCfg, err := pki.PoolConfig(id.CAPEM, "127.0.0.1")
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	client, resp, err := websocket.Dial(dctx, "wss://"+ln.Addr().String()+"/", &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}},
		CompressionMode: websocket.CompressionDisabled,
	})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		srv.Close()
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	var server *websocket.Conn
	select {
	case server = <-accepted:
	case <-dctx.Done():
		client.CloseNow()
		srv.Close()
		return nil, nil, dctx.Err()
	}

	// The agent's side: read a job, ack it.
	echoCtx, stopEcho := context.WithCancel(ctx)
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		for {
			_, b, err := client.Read(echoCtx)
			if err != nil {
				return
			}
			var f wire.Frame
			if json.Unmarshal(b, &f) != nil || f.Job == nil {
				return
			}
			ack, _ := json.Marshal(wire.Frame{Type: wire.FrameAck, ID: f.Job.ID})
			if client.Write(echoCtx, websocket.MessageText, ack) != nil {
				return
			}
		}
	}()

	seq := 0
	rtt = func() error {
		seq++
		jobID := "job_limits_" + strconv.Itoa(seq)
		b, err := json.Marshal(wire.Frame{Type: wire.FrameJob, Job: &wire.JobPush{ID: jobID, Kind: string(deskrun.JobNoop)}})
		if err != nil {
			return err
		}
		if err := server.Write(ctx, websocket.MessageText, b); err != nil {
			return err
		}
		_, b, err = server.Read(ctx)
		if err != nil {
			return err
		}
		var f wire.Frame
		if err := json.Unmarshal(b, &f); err != nil {
			return err
		}
		if f.Type != wire.FrameAck || f.ID != jobID {
			return fmt.Errorf("got %s %q, want the ack of %s", f.Type, f.ID, jobID)
		}
		return nil
	}
	closeWS = func() {
		stopEcho()
		client.CloseNow()
		server.CloseNow()
		<-echoDone
		srv.Close()
	}
	return rtt, closeWS, nil
}

// credentialOf is the credential of a local user with its groups, as a
// child gets it through SysProcAttr.Credential.
func credentialOf(name string) (*syscall.Credential, *SpawnProof, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, nil, err
	}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, nil, err
	}
	atoi := func(s string) (uint32, error) {
		n, err := strconv.ParseUint(s, 10, 32)
		return uint32(n), err
	}
	p := &SpawnProof{User: name, Groups: make([]uint32, 0, len(gids))}
	if p.UID, err = atoi(u.Uid); err != nil {
		return nil, nil, err
	}
	if p.GID, err = atoi(u.Gid); err != nil {
		return nil, nil, err
	}
	for _, g := range gids {
		n, err := atoi(g)
		if err != nil {
			return nil, nil, err
		}
		p.Groups = append(p.Groups, n)
	}
	return &syscall.Credential{Uid: p.UID, Gid: p.GID, Groups: p.Groups}, p, nil
}

// proveSpawn starts `id` the way the setuid case starts /bin/true and
// checks the child ran with the user's ids, filling p.Child.
func proveSpawn(cred *syscall.Credential, p *SpawnProof) error {
	cmd := exec.Command("/bin/sh", "-c", `echo "$(id -u) $(id -g) $(id -G)"`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("id as %s: %w", p.User, err)
	}
	p.Child = strings.TrimSpace(string(out))
	want := fmt.Sprintf("%d %d", p.UID, p.GID)
	for _, g := range p.Groups {
		want += " " + strconv.FormatUint(uint64(g), 10)
	}
	if p.Child != want {
		return fmt.Errorf("the child of %s ran with ids %q, want %q", p.User, p.Child, want)
	}
	return nil
}
