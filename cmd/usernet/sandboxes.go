package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/spf13/cobra"

	"github.com/usernet/usernet/api"
	"github.com/usernet/usernet/engine"
)

// The commands in this file manage existing sandboxes: ps, stop, rm,
// logs, port and inspect.

type psOptions struct {
	all   bool
	quiet bool
}

func newPsCmd(e *env) *cobra.Command {
	var o psOptions
	cmd := &cobra.Command{
		Use:   "ps [OPTIONS]",
		Short: "List sandboxes",
		Args:  cobra.NoArgs,
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return listSandboxes(cmd.Context(), e, &o)
		}),
	}
	cmd.Flags().BoolVarP(&o.all, "all", "a", false, "show all sandboxes (default shows just running)")
	cmd.Flags().BoolVarP(&o.quiet, "quiet", "q", false, "only show IDs")
	return cmd
}

func listSandboxes(ctx context.Context, e *env, o *psOptions) error {
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	rows, err := c.List(ctx, o.all)
	if err != nil {
		return err
	}
	if o.quiet {
		return writeIDs(e.out, rows)
	}
	return writePs(e.out, rows)
}

// forEachName runs fn for every name, printing each failure on its own
// line and going on with the rest, as docker does; any failure makes the
// exit status 1.
func forEachName(ctx context.Context, e *env, names []string, fn func(c *api.Client, name string) error) error {
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	failed := false
	for _, name := range names {
		if err := fn(c, name); err != nil {
			fmt.Fprintln(e.err, "usernet: "+oneLine(err.Error()))
			failed = true
		}
	}
	if failed {
		return &exitError{code: statusFailed}
	}
	return nil
}

// forEachNameEcho is forEachName for commands that print each name they
// acted on, as docker stop, rm and network rm do.
func forEachNameEcho(ctx context.Context, e *env, names []string, act func(c *api.Client, name string) error) error {
	return forEachName(ctx, e, names, func(c *api.Client, name string) error {
		if err := act(c, name); err != nil {
			return err
		}
		_, err := fmt.Fprintln(e.out, name)
		return err
	})
}

type stopOptions struct {
	timeout int
}

func newStopCmd(e *env) *cobra.Command {
	var o stopOptions
	cmd := &cobra.Command{
		Use:   "stop [OPTIONS] SANDBOX...",
		Short: "Stop running sandboxes (SIGTERM, then SIGKILL after a grace period)",
		Args:  argsAtLeast(1, "the sandbox to stop"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			var timeout *int
			if cmd.Flags().Changed("time") {
				timeout = &o.timeout
			}
			return forEachNameEcho(cmd.Context(), e, args, func(c *api.Client, name string) error {
				return c.Stop(cmd.Context(), name, timeout)
			})
		}),
	}
	cmd.Flags().IntVarP(&o.timeout, "time", "t", 10, "seconds to wait before killing the command (-1: wait forever)")
	return cmd
}

type rmOptions struct {
	force bool
}

func newRmCmd(e *env) *cobra.Command {
	var o rmOptions
	cmd := &cobra.Command{
		Use:   "rm [OPTIONS] SANDBOX...",
		Short: "Remove sandboxes",
		Args:  argsAtLeast(1, "the sandbox to remove"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return forEachNameEcho(cmd.Context(), e, args, func(c *api.Client, name string) error {
				return c.Remove(cmd.Context(), name, o.force)
			})
		}),
	}
	cmd.Flags().BoolVarP(&o.force, "force", "f", false, "kill and remove a running sandbox")
	return cmd
}

type logsOptions struct {
	follow bool
}

func newLogsCmd(e *env) *cobra.Command {
	var o logsOptions
	cmd := &cobra.Command{
		Use:   "logs [OPTIONS] SANDBOX",
		Short: "Show the output of a detached sandbox",
		Args:  argsRange(1, 1, "exactly one sandbox"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return showLogs(cmd.Context(), e, &o, args[0])
		}),
	}
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "keep printing new output until the sandbox exits")
	return cmd
}

func showLogs(ctx context.Context, e *env, o *logsOptions, name string) error {
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	// Each stream is its own request, copied to the matching stream of
	// ours, as docker logs does; both are open before either is copied so
	// that an error (no such sandbox) comes before any output.
	outs := []*os.File{e.out, e.err}
	var rcs []io.ReadCloser
	defer func() {
		for _, rc := range rcs {
			rc.Close()
		}
	}()
	for _, stream := range []engine.LogStream{engine.Stdout, engine.Stderr} {
		rc, err := c.Logs(ctx, name, stream, o.follow)
		if err != nil {
			return err
		}
		rcs = append(rcs, rc)
	}
	errs := make([]error, len(rcs))
	var wg sync.WaitGroup
	for i, rc := range rcs {
		wg.Go(func() {
			if _, err := io.Copy(outs[i], rc); err != nil {
				errs[i] = fmt.Errorf("logs of %s: %w", name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func newPortCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "port SANDBOX [PORT[/PROTO]]",
		Short: "List a sandbox's published ports, or the host addresses of one",
		Args:  argsRange(1, 2, "a sandbox and optionally a port"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return showPorts(cmd.Context(), e, args[0], args[1:])
		}),
	}
}

func showPorts(ctx context.Context, e *env, name string, port []string) error {
	var filter *engine.PortProto
	if len(port) == 1 {
		ports, err := api.ParseExposeSpec(port[0])
		if err != nil {
			return err
		}
		if len(ports) != 1 {
			return fmt.Errorf("invalid port %q: name one port, not a range", port[0])
		}
		filter = &ports[0]
	}
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	mappings, err := c.Port(ctx, name)
	if err != nil {
		return err
	}
	if filter != nil && !publishes(mappings, *filter) {
		return fmt.Errorf("no public port %s published for %s", filter, name)
	}
	return writePorts(e.out, mappings, filter)
}

// publishes reports whether mappings include the container port p.
func publishes(mappings []engine.PortMapping, p engine.PortProto) bool {
	for _, m := range mappings {
		if m.ContainerPort == p.Port && m.Proto == p.Proto {
			return true
		}
	}
	return false
}

func newInspectCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect SANDBOX...",
		Short: "Show sandboxes' details as JSON (docker inspect's shape)",
		Args:  argsAtLeast(1, "the sandbox to inspect"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return inspectEach(cmd.Context(), e, args, (*api.Client).Inspect)
		}),
	}
}

// inspectEach prints, as one JSON array, what fetch returns for each
// name, then fails if any name was not found: as docker does, the objects
// that exist are printed even when others do not.
func inspectEach[T any](ctx context.Context, e *env, names []string, fetch func(*api.Client, context.Context, string) (T, error)) error {
	found := []T{}
	err := forEachName(ctx, e, names, func(c *api.Client, name string) error {
		v, err := fetch(c, ctx, name)
		if err == nil {
			found = append(found, v)
		}
		return err
	})
	if werr := writeJSON(e.out, found); werr != nil {
		return werr
	}
	return err
}
