package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/usernet/usernet/api"
)

// Exit statuses for usernet's own failures, as docker uses them.
const (
	// statusFailed: a management command (ps, rm, stop, ...) failed.
	statusFailed = 1
	// statusUsage: bad flags or arguments, or run/exec failed before the
	// command started.
	statusUsage = 125
	// statusCannotRun: the command exists but cannot be executed.
	statusCannotRun = 126
	// statusNotFound: the command does not exist.
	statusNotFound = 127
)

// stdio is the CLI's standard streams. They are files, not io.Writers,
// because run and exec hand the descriptors themselves to the daemon.
type stdio struct {
	in, out, err *os.File
}

func newStdio() stdio { return stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr} }

// env is what every command needs: the streams and a way to reach the
// daemon (tests point it at a daemon of their own).
type env struct {
	stdio
	connect func(ctx context.Context) (*api.Client, error)
}

// execute runs the CLI with args and returns the process's exit status,
// having printed any error as one line on stderr.
func execute(ctx context.Context, s stdio, args []string) int {
	return executeEnv(ctx, &env{stdio: s, connect: connectDaemon}, args)
}

// executeEnv is execute with the environment given (tests bring their own
// daemon).
func executeEnv(ctx context.Context, e *env, args []string) int {
	root := newRootCmd(e)
	root.SetArgs(args)
	return report(e.err, root.ExecuteContext(ctx))
}

// newRootCmd builds the whole command tree.
func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "usernet",
		Short: "Docker-style networking for processes, without privileges",
		Long: "usernet runs commands in sandboxes with their own network namespace, attached to\n" +
			"virtual networks held by one unprivileged daemon per user (started on demand).",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(e.in)
	root.SetOut(e.out)
	root.SetErr(e.err)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &exitError{code: statusUsage, err: fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(
		newRunCmd(e),
		newExecCmd(e),
		newDaemonCmd(e),
		newPsCmd(e),
		newStopCmd(e),
		newRmCmd(e),
		newLogsCmd(e),
		newPortCmd(e),
		newInspectCmd(e),
		newNetworkCmd(e),
	)
	return root
}

// connectDaemon reaches the user's daemon, starting it if none answers.
func connectDaemon(ctx context.Context) (*api.Client, error) {
	socket := api.DefaultSocketPath()
	stateDir, err := api.DefaultStateDir()
	if err != nil {
		return nil, err
	}
	return api.Connect(ctx, socket, &api.AutoStart{
		Command: []string{"/proc/self/exe", "daemon", "--socket", socket, "--state-dir", stateDir},
		LogPath: filepath.Join(stateDir, "daemon.log"),
	})
}

// exitError carries the exit status a failure calls for. A nil err exits
// quietly: the command's own status, passed through.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// withStatus makes a RunE whose plain errors exit with code; errors that
// already carry a status keep it.
func withStatus(code int, run func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := run(cmd, args)
		var ee *exitError
		if err == nil || errors.As(err, &ee) {
			return err
		}
		return &exitError{code: code, err: err}
	}
}

// report prints err (if any) as one line and returns the exit status. An
// error without a status came from cobra itself (an unknown command, a
// wrong number of arguments): a usage error.
func report(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	code := statusUsage
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.err == nil {
			return code
		}
		err = ee.err
	}
	fmt.Fprintln(w, "usernet: "+oneLine(err.Error()))
	return code
}

// oneLine folds a multi-line message onto one line.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// argsAtLeast is cobra.MinimumNArgs with a message naming what is missing.
func argsAtLeast(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) >= n {
			return nil
		}
		plural := "s"
		if n == 1 {
			plural = ""
		}
		return fmt.Errorf("%q requires at least %d argument%s: %s", cmd.CommandPath(), n, plural, what)
	}
}

// argsRange is cobra.RangeArgs with a message naming the arguments.
func argsRange(lo, hi int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) >= lo && len(args) <= hi {
			return nil
		}
		return fmt.Errorf("%q takes %s, got %d argument(s)", cmd.CommandPath(), what, len(args))
	}
}
