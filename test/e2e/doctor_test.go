package e2e

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/doctor"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

// TestDoctorReportReachesTheAPI: an in-process agent runs the real doctor
// checks (on fixture paths: no domain, deskrun's PAM services missing)
// when it connects, sends them over its WebSocket, and GET
// /api/v1/machines/{machine} returns them; the machine list does not.
func TestDoctorReportReachesTheAPI(t *testing.T) {
	t.Parallel()
	cfg := server.DefaultConfig()
	cfg.Data, cfg.Listen = t.TempDir(), "127.0.0.1:0"
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test"}
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	_, tok, err := s.Control.CreateToken(t.Context(), wire.TokenCreate{Kind: "enrollment"})
	require.NoError(t, err)
	dir := t.TempDir()
	_, err = agent.Enroll(t.Context(), agent.EnrollOptions{Token: tok, Name: "doc1", StateDir: dir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)

	stack := pam.DefaultStack()
	stack.PAMDir = filepath.Join(t.TempDir(), "pam.d") // no services installed
	none := filepath.Join(t.TempDir(), "none")
	opts := doctor.Options{Stack: stack, Timeout: time.Second, DirectoryConfig: none, StateDir: dir,
		Paths: identity.HostPaths{SSSDConf: none, Krb5Conf: none, SmbConf: none}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ag := &agent.Agent{StateDir: dir, Log: slog.New(slog.DiscardHandler), Info: agent.HostInfo(agent.DefaultHostFiles, 1),
		Doctor:      func(ctx context.Context) deskrun.DoctorReport { return doctor.Run(ctx, opts) },
		DoctorEvery: time.Hour, DoctorTimeout: 3 * time.Second}
	go func() { _ = ag.Run(ctx) }()
	// An agent at protocol 3 never sends a report, even with the checks.
	oldDir := t.TempDir()
	_, tok, err = s.Control.CreateToken(t.Context(), wire.TokenCreate{Kind: "enrollment"})
	require.NoError(t, err)
	_, err = agent.Enroll(t.Context(), agent.EnrollOptions{Token: tok, Name: "doc-old", StateDir: oldDir, Info: agent.HostInfo(agent.DefaultHostFiles, 1)})
	require.NoError(t, err)
	oldConnected := make(chan struct{})
	old := &agent.Agent{StateDir: oldDir, Log: slog.New(slog.DiscardHandler), Info: agent.HostInfo(agent.DefaultHostFiles, 1),
		ProtocolVersion: wire.DoctorProtocolVersion - 1, Doctor: ag.Doctor, OnConnected: sync.OnceFunc(func() { close(oldConnected) })}
	go func() { _ = old.Run(ctx) }()
	<-oldConnected

	tokenBytes, err := os.ReadFile(filepath.Join(cfg.Data, server.BootstrapTokenFile))
	require.NoError(t, err)
	cl, err := client.New(s.Config.URL, strings.TrimSpace(string(tokenBytes)), s.TLS.CAPEM)
	require.NoError(t, err)

	sent := time.Now()
	var m *wire.Machine
	require.Eventually(t, func() bool {
		m, err = cl.Machine(t.Context(), "doc1")
		return err == nil && m.Doctor != nil
	}, 15*time.Second, 10*time.Millisecond, "the agent's doctor report never reached the API")
	require.Equal(t, wire.ProtocolVersion, m.ProtocolVersion)
	require.WithinDuration(t, sent, m.Doctor.At, 15*time.Second, "dated when the server received it")

	got := map[string]deskrun.DoctorCheck{}
	for _, c := range m.Doctor.Checks {
		got[c.Name] = c
	}
	batch := got["pam service batch"]
	require.Equal(t, deskrun.DoctorFail, batch.Status)
	require.Contains(t, batch.Detail, filepath.Join(stack.PAMDir, "deskrun-batch")+" missing")
	require.Equal(t, "deskrun agent install-pam --pam-dir "+stack.PAMDir, batch.Fix)
	require.Equal(t, deskrun.DoctorPass, got["join"].Status)
	require.Equal(t, deskrun.DoctorSkip, got["directory"].Status)
	require.NotContains(t, got, "nss", "the agent's report is machine-wide: no user checks")
	require.Contains(t, got, "root")

	ms, err := cl.Machines(t.Context())
	require.NoError(t, err)
	require.Len(t, ms, 2)
	for _, m := range ms {
		require.Nil(t, m.Doctor, "the list stays light")
	}
	m, err = cl.Machine(t.Context(), "doc-old")
	require.NoError(t, err)
	require.Equal(t, wire.DoctorProtocolVersion-1, m.ProtocolVersion)
	require.Nil(t, m.Doctor, "an older agent never sends a report")
}
