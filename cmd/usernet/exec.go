package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/usernet/usernet/api"
)

// execOptions are the flags of `usernet exec`.
type execOptions struct {
	interactive bool
	tty         bool
	env         []string
	workdir     string
}

func newExecCmd(e *env) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec [OPTIONS] SANDBOX COMMAND [ARG...]",
		Short: "Run a command inside a running sandbox",
		Long: "Run a command inside a running sandbox's namespaces. The command gets usernet's\n" +
			"stdout and stderr (and stdin with -i or -t), signals sent to usernet are passed\n" +
			"on to it, and usernet exits with its exit status.",
		Args: argsAtLeast(2, "the sandbox and the command to run"),
		RunE: withStatus(statusUsage, func(cmd *cobra.Command, args []string) error {
			return execInSandbox(cmd.Context(), e, &o, args[0], args[1:])
		}),
	}
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.BoolVarP(&o.interactive, "interactive", "i", false, "keep stdin open")
	f.BoolVarP(&o.tty, "tty", "t", false, "give the command the terminal (stdin must be one)")
	f.StringArrayVarP(&o.env, "env", "e", nil, "set an environment variable: K=V (or K to copy it from here)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory inside the sandbox")
	return cmd
}

// request turns the options and the command into an API request.
func (o *execOptions) request(args []string) (api.ExecRequest, error) {
	env, err := parseEnv(o.env, os.LookupEnv)
	if err != nil {
		return api.ExecRequest{}, err
	}
	return api.ExecRequest{Args: args, Env: env, WorkingDir: o.workdir, TTY: o.tty, Interactive: o.interactive}, nil
}

// execInSandbox is `usernet exec`.
func execInSandbox(ctx context.Context, e *env, o *execOptions, sandbox string, args []string) error {
	req, err := o.request(args)
	if err != nil {
		return err
	}
	if o.tty && !isTerminal(e.in) {
		return errors.New("the input device is not a TTY")
	}
	files, release, err := passable(e.stdio)
	if err != nil {
		return err
	}
	defer release()
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	fw := catchSignals(e.err, o.tty)
	defer fw.stop()
	if o.tty {
		// Raw mode before the start, as for run -t.
		restore, err := rawTerminal(e)
		if err != nil {
			return err
		}
		defer restore()
	}
	execID, st, err := c.Exec(ctx, sandbox, req, files)
	if err != nil {
		return startFailure(err)
	}
	defer st.Close()
	fw.start(func(sig os.Signal) error { return c.ExecKill(context.WithoutCancel(ctx), execID, toSyscall(sig)) })
	code, err := st.Wait()
	if err != nil {
		return fmt.Errorf("waiting for the command in %s: %w", sandbox, err)
	}
	return &exitError{code: code}
}
