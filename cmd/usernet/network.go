package main

import (
	"github.com/spf13/cobra"
	"github.com/usernet/usernet/api"
)

func newNetworkCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "List and inspect networks",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newNetworkLsCmd(e), newNetworkInspectCmd(e))
	return cmd
}

func newNetworkLsCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List networks",
		Args:    cobra.NoArgs,
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			c, err := e.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			nets, err := c.Networks(cmd.Context())
			if err != nil {
				return err
			}
			return writeNetworks(e.out, nets)
		}),
	}
}

func newNetworkInspectCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NETWORK...",
		Short: "Show networks' details as JSON (docker network inspect's shape)",
		Args:  argsAtLeast(1, "the network to inspect"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return inspectEach(cmd.Context(), e, args, (*api.Client).NetworkInspect)
		}),
	}
}
