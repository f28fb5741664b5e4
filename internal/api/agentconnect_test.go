package api_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/control"
	"github.com/deskrun/deskrun/internal/pki"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

// TestAgentConnectLargeFrames sends large frames each way through the real
// agent endpoint, whose connection keeps only small bufio buffers: the
// largest job payload to the agent, a 1 MB result from it.
func TestAgentConnectLargeFrames(t *testing.T) {
	t.Parallel()
	cfg := server.DefaultConfig()
	cfg.Data, cfg.Listen, cfg.MaxBodyBytes = t.TempDir(), "127.0.0.1:0", 4<<20
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test"}
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	admin, err := os.ReadFile(filepath.Join(cfg.Data, server.BootstrapTokenFile))
	require.NoError(t, err)
	api, err := client.New(s.Config.URL, strings.TrimSpace(string(admin)), s.TLS.CAPEM)
	require.NoError(t, err)
	tok, err := api.CreateToken(t.Context(), wire.TokenCreate{Kind: string(deskrun.TokenEnrollment), Uses: 1})
	require.NoError(t, err)
	dir := t.TempDir()
	_, err = agent.Enroll(t.Context(), agent.EnrollOptions{Token: tok.Secret, Name: "big", StateDir: dir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)
	id, err := agent.LoadIdentity(dir)
	require.NoError(t, err)

	tlsCfg, err := pki.PoolConfig(s.TLS.CAPEM, "127.0.0.1")
	require.NoError(t, err)
	ws, _, err := websocket.Dial(t.Context(), "wss"+strings.TrimPrefix(s.Config.URL, "https")+"/api/v1/agent/connect",
		&websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}})
	require.NoError(t, err)
	defer ws.CloseNow()
	ws.SetReadLimit(8 << 20)
	read := func() *wire.Frame {
		t.Helper()
		_, b, err := ws.Read(t.Context())
		require.NoError(t, err)
		var f wire.Frame
		require.NoError(t, json.Unmarshal(b, &f))
		return &f
	}
	write := func(f *wire.Frame) {
		t.Helper()
		b, err := json.Marshal(f)
		require.NoError(t, err)
		require.NoError(t, ws.Write(t.Context(), websocket.MessageText, b))
	}
	ch := read()
	require.Equal(t, wire.FrameChallenge, ch.Type)
	write(&wire.Frame{Type: wire.FrameHello, Hello: &wire.Hello{MachineID: id.MachineID, ProtocolVersion: wire.ProtocolVersion,
		Signature: ed25519.Sign(id.SigningKey, wire.AuthMessage(id.MachineID, ch.Challenge.Nonce))}})
	require.Equal(t, wire.FrameWelcome, read().Type)

	big := func(c byte, n int) json.RawMessage { // a JSON string of n bytes
		return json.RawMessage(`"` + strings.Repeat(string(c), n-2) + `"`)
	}
	// Server → agent: a job with the largest payload.
	j, err := api.CreateJob(t.Context(), wire.JobCreate{Machine: "big", Kind: "noop", Payload: big('p', control.MaxPayload)})
	require.NoError(t, err)
	f := read()
	require.Equal(t, wire.FrameJob, f.Type)
	require.Equal(t, j.ID, f.Job.ID)
	require.True(t, bytes.Equal(big('p', control.MaxPayload), f.Job.Payload), "the payload arrived whole")

	// Agent → server: a 1 MB result, then a small frame on the same connection.
	write(&wire.Frame{Type: wire.FrameAck, ID: j.ID})
	write(&wire.Frame{Type: wire.FrameResult, Result: &wire.JobResult{ID: j.ID, OK: true, Output: big('r', 1<<20)}})
	f = read()
	require.Equal(t, wire.FrameResultAck, f.Type)
	require.Equal(t, j.ID, f.ID)
	got, err := api.Job(t.Context(), j.ID, 0)
	require.NoError(t, err)
	require.Equal(t, string(deskrun.JobSucceeded), got.State)
	require.True(t, bytes.Equal(big('r', 1<<20), got.Result), "the result was stored whole")

	small, err := api.CreateJob(t.Context(), wire.JobCreate{Machine: "big", Kind: "noop"})
	require.NoError(t, err)
	f = read()
	require.Equal(t, small.ID, f.Job.ID)
	write(&wire.Frame{Type: wire.FrameResult, Result: &wire.JobResult{ID: small.ID, OK: true}})
	require.Equal(t, wire.FrameResultAck, read().Type)
	got, err = api.Job(t.Context(), small.ID, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, string(deskrun.JobSucceeded), got.State)
}
