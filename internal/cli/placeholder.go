package cli

// TEMPORARY: replaced by the real commands in this same session.

import "github.com/spf13/cobra"

func newDevCmd(a *app) *cobra.Command     { return &cobra.Command{Use: "dev"} }
func newServerCmd(a *app) *cobra.Command  { return &cobra.Command{Use: "server"} }
func newMigrateCmd(a *app) *cobra.Command { return &cobra.Command{Use: "migrate"} }
func newAgentCmd(a *app) *cobra.Command   { return &cobra.Command{Use: "agent"} }
func newMachineCmd(a *app) *cobra.Command { return &cobra.Command{Use: "machine"} }
func newTokenCmd(a *app) *cobra.Command   { return &cobra.Command{Use: "token"} }
func newJobCmd(a *app) *cobra.Command     { return &cobra.Command{Use: "job"} }
func newVersionCmd(a *app) *cobra.Command { return &cobra.Command{Use: "version"} }
