package runas

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/identity"
)

var alice = identity.Identity{Username: "alice", UID: 1500, GID: 1500, Groups: []uint32{1500, 27, 27, 100}, Home: "/home/alice", Shell: "/bin/bash"}

func TestPlan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		spec       Spec
		euid, egid int
		wantErr    error
		wantDrop   bool
	}{
		{"root runs as a user", Spec{Identity: alice, Path: "id"}, 0, 0, nil, true},
		{"user runs as itself", Spec{Identity: alice, Path: "id"}, 1500, 1500, nil, false},
		{"user cannot run as another", Spec{Identity: alice, Path: "id"}, 1501, 1501, ErrNotRoot, false},
		{"user cannot change group", Spec{Identity: alice, Path: "id"}, 1500, 100, ErrNotRoot, false},
		{"root target refused", Spec{Identity: identity.Identity{Username: "root", Home: "/root"}, Path: "id"}, 0, 0, ErrRunAsRoot, false},
		{"root target allowed", Spec{Identity: identity.Identity{Username: "root", Home: "/root"}, Path: "id", AllowRoot: true}, 0, 0, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, err := plan(tt.spec, tt.euid, tt.egid)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantDrop, cs.Drop)
			require.Equal(t, tt.spec.Identity.Home, cs.Dir, "Dir defaults to the home")
		})
	}
}

func TestPlanGroupsExactlyTheUsers(t *testing.T) {
	t.Parallel()
	cs, err := plan(Spec{Identity: alice, Path: "id"}, 0, 0)
	require.NoError(t, err)
	require.Equal(t, []uint32{1500, 27, 100}, cs.Groups, "GID first, no duplicates, nothing added")
	require.NotContains(t, cs.Groups, uint32(0))

	noGroups := alice
	noGroups.Groups = nil
	cs, err = plan(Spec{Identity: noGroups, Path: "id"}, 0, 0)
	require.NoError(t, err)
	require.Equal(t, []uint32{1500}, cs.Groups)
}

func TestPlanEnv(t *testing.T) {
	t.Parallel()
	cs, err := plan(Spec{Identity: alice, Path: "id", Args: []string{"-u"}, Dir: "/run/x",
		Env: []string{"DESKRUN_INPUT_NAME=Ada", "PATH=/opt/bin", "HOME=/elsewhere"}}, 0, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"HOME=/elsewhere", "USER=alice", "LOGNAME=alice", "SHELL=/bin/bash", "PATH=/opt/bin", "DESKRUN_INPUT_NAME=Ada"}, cs.Env)
	require.Equal(t, []string{"id", "-u"}, cs.Args)
	require.Equal(t, "/run/x", cs.Dir)

	_, err = plan(Spec{Identity: alice, Path: "id", Env: []string{"NOEQUALS"}}, 0, 0)
	require.Error(t, err)
	_, err = plan(Spec{Identity: alice, Path: "id", Env: []string{"SECRET=hunter2\x00"}}, 0, 0)
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2", "a bad entry's value is never echoed")
}
