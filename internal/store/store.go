// Package store is the persistence seam of the server: one Store interface
// that every backend (sqlite/, later postgres/) implements and that the
// storetest conformance suite checks.
//
// The interface speaks the domain (package deskrun) only. Backends turn
// driver errors into *deskrun.Error in one function each: a missing row is
// CodeNotFound, a unique violation CodeConflict. Nothing here relies on
// SQLite-only semantics: every multi-row rule is written as a transaction
// through InTx, so a PostgreSQL backend with several servers gives the same
// answers.
package store

import (
	"context"
	"time"

	"github.com/deskrun/deskrun"
)

// Store is the server's state.
type Store interface {
	Tx
	// Ping checks that the store answers (for /readyz).
	Ping(ctx context.Context) error
	// Migrate applies the embedded migrations that are not applied yet and
	// returns the versions it applied.
	Migrate(ctx context.Context) ([]int, error)
	// Close releases the store; closing it again is harmless.
	Close() error
}

// Tx is everything that can be read or written, inside or outside a
// transaction. Methods return a *deskrun.Error with CodeNotFound for a
// missing row and CodeConflict for a duplicate.
type Tx interface {
	// InTx runs fn in one transaction, committed if fn returns nil and
	// rolled back otherwise. fn must use only the Tx it is given: a backend
	// with a single writer (SQLite) blocks if fn writes through the Store.
	//
	// Called on a Tx, InTx reuses that transaction: fn's writes roll back
	// on its own error (a savepoint) and commit with the outer transaction.
	// Code that takes a Tx can so ask for atomicity without knowing
	// whether its caller already holds a transaction.
	InTx(ctx context.Context, fn func(Tx) error) error

	FlowTx

	// Machines.
	CreateMachine(ctx context.Context, m *deskrun.Machine) error
	GetMachine(ctx context.Context, id string) (*deskrun.Machine, error)
	GetMachineByName(ctx context.Context, name string) (*deskrun.Machine, error)
	ListMachines(ctx context.Context) ([]*deskrun.Machine, error)
	// UpdateMachineInfo stores what the agent reported in its hello.
	UpdateMachineInfo(ctx context.Context, m *deskrun.Machine) error
	// SetMachinePresence records a change of state (online/offline); the
	// server keeps heartbeats in memory and writes only changes.
	SetMachinePresence(ctx context.Context, id string, state deskrun.MachineState, lastSeen time.Time, reason string) error
	// MarkAllMachinesOffline is called when a server starts: no agent is
	// connected to it yet. Every machine not already offline becomes
	// offline with reason and LastSeen at; offline machines keep theirs.
	MarkAllMachinesOffline(ctx context.Context, at time.Time, reason string) error
	// DeleteMachine deletes a machine and its jobs.
	DeleteMachine(ctx context.Context, id string) error
	// SetMachineSessions sets the machine's unattended-session policy
	// ("shared" or "exclusive"); UpdateMachineInfo never touches it.
	SetMachineSessions(ctx context.Context, id, sessions string) error
	// SetMachineDoctor stores the latest doctor report the agent sent,
	// replacing the one before; GetMachine and ListMachines return it.
	SetMachineDoctor(ctx context.Context, id string, r *deskrun.DoctorReport) error

	// Tokens.
	CreateToken(ctx context.Context, t *deskrun.Token) error
	GetToken(ctx context.Context, id string) (*deskrun.Token, error)
	ListTokens(ctx context.Context, kind deskrun.TokenKind) ([]*deskrun.Token, error)
	// RevokeToken revokes a token; revoking it again keeps the first time.
	RevokeToken(ctx context.Context, id string, at time.Time) error
	// UseEnrollmentToken takes one use of an enrollment token and sets its
	// LastUsed. It fails with CodeEnrollmentTokenUsedUp when none is left,
	// atomically, so two agents racing for the last use cannot both win;
	// with CodeEnrollmentTokenExpired at or after ExpiresAt; and with
	// CodeEnrollmentTokenInvalid when the token does not exist, is revoked
	// or is not an enrollment token.
	UseEnrollmentToken(ctx context.Context, id string, at time.Time) error
	// TouchToken sets a token's LastUsed.
	TouchToken(ctx context.Context, id string, at time.Time) error

	// Connections. Create and Update write the connection and its sealed
	// credentials together; Update replaces the credentials when the slice
	// is not nil.
	CreateConnection(ctx context.Context, c *deskrun.Connection) error
	GetConnection(ctx context.Context, id string) (*deskrun.Connection, error)
	GetConnectionByName(ctx context.Context, name string) (*deskrun.Connection, error)
	// GetConnections returns those of the connections ids names that
	// exist, ordered by name; a missing one is left out, not an error.
	GetConnections(ctx context.Context, ids []string) ([]*deskrun.Connection, error)
	ListConnections(ctx context.Context) ([]*deskrun.Connection, error)
	UpdateConnection(ctx context.Context, c *deskrun.Connection) error
	// SetConnectionHealth records the outcome of a logon with the
	// connection: State, Reason, LastError, StateChangedAt, LastTestedAt,
	// ExpiresInDays and ExpiryCheckedAt of c are written, nothing else.
	SetConnectionHealth(ctx context.Context, c *deskrun.Connection) error
	DeleteConnection(ctx context.Context, id string) error

	// Runs of desktop flows.
	CreateRun(ctx context.Context, r *deskrun.Run) error
	GetRun(ctx context.Context, id string) (*deskrun.Run, error)
	// GetRunByJob finds the run an agent job carries.
	GetRunByJob(ctx context.Context, jobID string) (*deskrun.Run, error)
	// ListRuns returns runs newest first, filtered.
	ListRuns(ctx context.Context, f RunFilter) ([]*deskrun.Run, error)
	// CountRuns counts the runs the filter selects (Limit is ignored).
	CountRuns(ctx context.Context, f RunFilter) (int, error)
	// ListQueuedRuns returns the queued runs f selects in placement order:
	// high priority first, then oldest first.
	ListQueuedRuns(ctx context.Context, f QueueFilter) ([]*deskrun.Run, error)
	// CountQueuedRuns counts the queued runs per connection and placement
	// reason, in no particular order: what the scheduler needs to know of
	// the queue without reading it.
	CountQueuedRuns(ctx context.Context) ([]QueueCount, error)
	// SetPlacementReason sets the placement reason (and UpdatedAt) of every
	// queued run of a connection whose reason differs, in one statement,
	// and returns the ids of the runs it changed.
	SetPlacementReason(ctx context.Context, connectionID, reason string, at time.Time) ([]string, error)
	// NextQueueDeadline returns the earliest QueueDeadline after after of
	// the queued runs, or the zero time when none has one (a zero
	// QueueDeadline is no deadline).
	NextQueueDeadline(ctx context.Context, after time.Time) (time.Time, error)
	// ActiveRunLoad says what the runs in flight (assigned, logging on or
	// running) hold: how many each machine has, and which users have an
	// unattended one on which machine (by their connection's username and
	// run mode as they are now; a run whose connection was deleted counts
	// only for its machine).
	ActiveRunLoad(ctx context.Context) (*RunLoad, error)
	// UpdateRun writes a run's mutable fields (state, machine, job, placement
	// reason, outputs, exit code, error, timings, every timestamp) unless the
	// stored run is already terminal: it returns false, changing nothing,
	// then. The run's flow, version, digest, connection, priority, inputs
	// and creation time never change.
	UpdateRun(ctx context.Context, r *deskrun.Run) (bool, error)
	// AssignRun places a run: in one transaction it writes r's mutable
	// fields as UpdateRun does and creates j, the job that carries it, if
	// the stored run is still queued. It returns false, writing nothing,
	// when the run is not queued any more (cancelled, failed, or placed by
	// someone else). r must be assigned to j: State RunAssigned, JobID j.ID
	// and MachineID j.MachineID (CodeInvalid otherwise).
	AssignRun(ctx context.Context, r *deskrun.Run, j *deskrun.Job) (bool, error)
	// AppendRunLog stores chunks of a run's output; a chunk whose Seq the
	// run already has is ignored.
	AppendRunLog(ctx context.Context, runID string, chunks []deskrun.LogChunk) error
	// ReadRunLog returns up to limit chunks with Seq > afterSeq, in order.
	ReadRunLog(ctx context.Context, runID string, afterSeq int64, limit int) ([]deskrun.LogChunk, error)
	// SaveRunScreenshot stores (replaces) a run's PNG screenshot.
	SaveRunScreenshot(ctx context.Context, runID string, png []byte) error
	GetRunScreenshot(ctx context.Context, runID string) ([]byte, error)

	// Desktop flows and their packages. A package is stored once per
	// digest, whatever the number of versions (of any flow) that use it.
	//
	// CreateDesktopFlowVersion stores archive as the package f.Digest (if
	// it is not stored yet) and makes it version latest+1 of f.Name, filling
	// f.Version; the caller has computed f.Digest from archive. When the
	// latest version already has f.Digest, nothing is written: f is
	// overwritten with that version and created is false. (An older
	// version with the same digest does not count: pushing it again is a
	// rollback, and makes a new latest version.)
	CreateDesktopFlowVersion(ctx context.Context, f *deskrun.DesktopFlow, archive []byte) (created bool, err error)
	// GetDesktopFlow returns a version of a flow; version 0 is the latest.
	GetDesktopFlow(ctx context.Context, name string, version int) (*deskrun.DesktopFlow, error)
	// ListDesktopFlows returns the latest version of every flow, by name.
	ListDesktopFlows(ctx context.Context) ([]*deskrun.DesktopFlow, error)
	// ListDesktopFlowVersions returns every version of a flow, newest
	// first; CodeNotFound when the flow has none.
	ListDesktopFlowVersions(ctx context.Context, name string) ([]*deskrun.DesktopFlow, error)
	// GetPackage returns the archive stored under a digest.
	GetPackage(ctx context.Context, digest string) ([]byte, error)
	// DeleteDesktopFlow deletes every version of a flow, and the packages
	// that no version of any flow uses any more.
	DeleteDesktopFlow(ctx context.Context, name string) error

	// Console users and sessions. GetSession returns an expired session
	// too (CodeNotFound only when missing); the caller checks ExpiresAt.
	// DeleteSession of a missing session is not an error.
	CreateUser(ctx context.Context, u *deskrun.User) error
	GetUser(ctx context.Context, name string) (*deskrun.User, error)
	ListUsers(ctx context.Context) ([]*deskrun.User, error)
	// UpdateUser writes a user's password hash and role.
	UpdateUser(ctx context.Context, u *deskrun.User) error
	CreateSession(ctx context.Context, s *deskrun.Session) error
	GetSession(ctx context.Context, idHash []byte) (*deskrun.Session, error)
	DeleteSession(ctx context.Context, idHash []byte) error
	// DeleteExpiredSessions deletes sessions whose ExpiresAt is at or
	// before now and returns how many.
	DeleteExpiredSessions(ctx context.Context, now time.Time) (int, error)

	// Audit log, append only.
	AppendAudit(ctx context.Context, e *deskrun.AuditEvent) error
	// ListAudit returns events newest first.
	ListAudit(ctx context.Context, f AuditFilter) ([]*deskrun.AuditEvent, error)

	// Jobs.
	CreateJob(ctx context.Context, j *deskrun.Job) error
	GetJob(ctx context.Context, id string) (*deskrun.Job, error)
	// ListJobs returns jobs newest first (by id, which sorts by creation
	// time); MachineID and States filter when not empty; a Limit of 0 or
	// less means DefaultJobLimit.
	ListJobs(ctx context.Context, f JobFilter) ([]*deskrun.Job, error)
	// UpdateJobState moves a job that is not terminal to state (pushed or
	// running) with a new lease. It returns false, and changes nothing, when
	// the job is already terminal. A terminal state is CodeInvalid: only
	// FinishJob ends a job.
	UpdateJobState(ctx context.Context, id string, state deskrun.JobState, leaseExpires, at time.Time) (bool, error)
	// SetJobProgress records the agent's latest progress line. A progress
	// line means the agent holds the job, so a pushed job becomes running
	// (the line is its ack). A late line for a terminal job changes
	// nothing and is not an error.
	SetJobProgress(ctx context.Context, id, progress string, at time.Time) error
	// FinishJob records a job's result exactly once: it returns false, and
	// changes nothing, when the job is already terminal. state must be
	// terminal (CodeInvalid otherwise); the lease is cleared.
	FinishJob(ctx context.Context, id string, state deskrun.JobState, result []byte, jobErr *deskrun.Error, at time.Time) (bool, error)
	// RenewLeases extends the lease of every pushed or running job of a
	// machine (one write per heartbeat period, not per job). A machine
	// without such jobs is not an error.
	RenewLeases(ctx context.Context, machineID string, leaseExpires time.Time) error
}

// DefaultJobLimit is the page ListJobs returns when JobFilter.Limit is 0.
const DefaultJobLimit = 100

// JobFilter selects jobs for ListJobs.
type JobFilter struct {
	MachineID string
	States    []deskrun.JobState
	Limit     int
}

// AuditFilter selects audit events; empty fields do not filter.
type AuditFilter struct {
	ConnectionID string
	Action       string
	Limit        int // 0: DefaultJobLimit
}

// RunFilter selects runs; empty fields do not filter.
type RunFilter struct {
	States       []deskrun.RunState
	Flow         string
	MachineID    string
	ConnectionID string
	Limit        int // 0: DefaultJobLimit
}

// QueueFilter selects queued runs for ListQueuedRuns; empty fields do not
// filter.
type QueueFilter struct {
	Priority deskrun.Priority
	// AfterID keeps the runs whose id is greater: with Priority, the next
	// page after a run.
	AfterID       string
	ConnectionIDs []string
	// DeadlineBy keeps the runs that have a QueueDeadline at or before it.
	DeadlineBy time.Time
	Limit      int // 0: DefaultJobLimit
}

// QueueCount is how many queued runs of a connection wait with a reason.
type QueueCount struct {
	ConnectionID string
	Reason       string
	Count        int
}

// RunLoad is what the runs in flight hold (ActiveRunLoad).
type RunLoad struct {
	// Active is the number of runs in flight per machine id.
	Active map[string]int
	// Unattended holds the users with an unattended run in flight on a
	// machine.
	Unattended map[MachineUser]bool
}

// MachineUser is a username on a machine.
type MachineUser struct {
	MachineID, Username string
}
