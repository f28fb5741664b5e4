package wire

import (
	"encoding/json"
	"time"

	"github.com/deskrun/deskrun"
)

// ProtocolVersion is the version of the agent protocol this binary speaks.
// It is a single increasing integer, bumped whenever the agent gains a
// capability or a message changes meaning. History:
//
//	1: challenge/hello with Ed25519, heartbeats, jobs (push, ack, progress,
//	   result, result ack), held jobs reported on reconnect.
//	2: "validate" jobs (test a connection's credential on the machine);
//	   identity failures carry their reason, NTSTATUS and provider result.
//	   An agent at 1 reports only the generic WindowsIdentityIncorrect.
//	3: "desktop" jobs (run a desktop flow as a connection's user) and "log"
//	   frames carrying their output.
//	4: "doctor" frames: the agent sends its machine-wide doctor report when
//	   it connects and then hourly. An agent at 3 or less never sends one.
const ProtocolVersion = 4

// ReasonsProtocolVersion is the first protocol whose identity failures
// carry a specific reason.
const ReasonsProtocolVersion = 2

// DoctorProtocolVersion is the first protocol whose agents send "doctor"
// frames.
const DoctorProtocolVersion = 4

// MinProtocolVersion is the oldest agent protocol the server accepts; an
// older agent is refused with AgentProtocolTooOld.
const MinProtocolVersion = 1

// AuthContext prefixes what the agent signs, so a signature made for
// deskrun's agent handshake means nothing anywhere else.
const AuthContext = "deskrun agent auth v1"

// AuthMessage is the exact byte string the agent signs: the context, the
// machine id and the server's fresh nonce. A signature over one nonce is
// worthless for the next connection (no replay).
func AuthMessage(machineID string, nonce []byte) []byte {
	b := make([]byte, 0, len(AuthContext)+1+len(machineID)+1+len(nonce))
	b = append(b, AuthContext...)
	b = append(b, 0)
	b = append(b, machineID...)
	b = append(b, 0)
	return append(b, nonce...)
}

// Frame types.
const (
	FrameChallenge = "challenge" // server → agent, first frame
	FrameHello     = "hello"     // agent → server, answers the challenge
	FrameWelcome   = "welcome"   // server → agent, the agent is in
	FrameError     = "error"     // server → agent, then close
	FrameHeartbeat = "heartbeat" // agent → server
	FrameJob       = "job"       // server → agent: do this
	FrameAck       = "ack"       // agent → server: I have it
	FrameProgress  = "progress"  // agent → server
	FrameResult    = "result"    // agent → server: done
	FrameResultAck = "result_ack"
	FrameCancel    = "cancel" // server → agent
	FrameDoctor    = "doctor" // agent → server: its doctor report (protocol 4)
)

// Frame is one message on the agent's WebSocket (a JSON text frame). Type
// says which one field is set.
type Frame struct {
	Type      string                `json:"type"`
	Challenge *Challenge            `json:"challenge,omitempty"`
	Hello     *Hello                `json:"hello,omitempty"`
	Welcome   *Welcome              `json:"welcome,omitempty"`
	Error     *deskrun.Error        `json:"error,omitempty"`
	Job       *JobPush              `json:"job,omitempty"`
	ID        string                `json:"id,omitempty"` // ack, result_ack, cancel
	Progress  *JobProgress          `json:"progress,omitempty"`
	Result    *JobResult            `json:"result,omitempty"`
	Log       *LogChunk             `json:"log,omitempty"`
	Doctor    *deskrun.DoctorReport `json:"doctor,omitempty"`
}

// Challenge carries a fresh random nonce for this connection.
type Challenge struct {
	Nonce []byte `json:"nonce"`
}

// Hello proves the agent's identity and says what it is and holds.
type Hello struct {
	MachineID       string      `json:"machine_id"`
	Signature       []byte      `json:"signature"`
	ProtocolVersion int         `json:"protocol_version"`
	Info            MachineInfo `json:"info"`
	// Held lists the jobs the agent has accepted and not yet seen
	// acknowledged: still running, or finished with a result to deliver.
	Held []HeldJob `json:"held,omitempty"`
}

// HeldJob is a job the agent holds across a reconnect.
type HeldJob struct {
	ID     string     `json:"id"`
	Result *JobResult `json:"result,omitempty"` // nil: still running
}

// MachineInfo is what an agent reports about its host.
type MachineInfo struct {
	Hostname        string `json:"hostname"`
	OS              string `json:"os"`
	Arch            string `json:"arch"`
	Kernel          string `json:"kernel"`
	AgentVersion    string `json:"agent_version"`
	ProtocolVersion int    `json:"protocol_version"`
	JoinState       string `json:"join_state"`
	Domain          string `json:"domain,omitempty"`
	Slots           int    `json:"slots,omitempty"`
	RunAsAnyUser    bool   `json:"run_as_any_user"` // the agent runs as root
}

// Welcome tells the agent its timing.
type Welcome struct {
	MachineID         string `json:"machine_id"`
	HeartbeatInterval int64  `json:"heartbeat_interval_ms"`
	ServerVersion     string `json:"server_version"`
}

// HeartbeatEvery returns the interval as a duration.
func (w *Welcome) HeartbeatEvery() time.Duration {
	return time.Duration(w.HeartbeatInterval) * time.Millisecond
}

// JobPush is a job sent to the agent.
type JobPush struct {
	ID      string          `json:"id"`
	Kind    string          `json:"kind"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// JobProgress is a progress line from the agent.
type JobProgress struct {
	ID      string `json:"id"`
	Message string `json:"message"`
}

// JobResult is how a job ended on the agent.
type JobResult struct {
	ID     string          `json:"id"`
	OK     bool            `json:"ok"`
	Output json.RawMessage `json:"output,omitempty"`
	Error  *deskrun.Error  `json:"error,omitempty"`
}

// EnrollRequest is the body of POST /api/v1/agent/enroll. The enrollment
// token's secret authenticates it; the keys are the agent's public halves.
type EnrollRequest struct {
	TokenID    string      `json:"token_id"`
	Secret     string      `json:"secret"`
	Name       string      `json:"name"`
	Info       MachineInfo `json:"info"`
	SigningKey []byte      `json:"signing_key"` // Ed25519 public key, 32 bytes
	SealKey    []byte      `json:"seal_key"`    // HPKE MLKEM768X25519 public key
}

// EnrollResponse names the new machine.
type EnrollResponse struct {
	Machine Machine `json:"machine"`
}
