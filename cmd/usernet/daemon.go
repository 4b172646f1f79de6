package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/usernet/usernet/api"
	"github.com/usernet/usernet/engine"
)

// daemonOptions are the flags of `usernet daemon`.
type daemonOptions struct {
	socket              string
	stateDir            string
	logLevel            string
	disableHostLoopback bool
	tcpNetstack         bool
}

// shutdownGrace bounds how long the daemon waits for requests in flight
// when it is told to stop.
const shutdownGrace = 5 * time.Second

func newDaemonCmd(e *env) *cobra.Command {
	var o daemonOptions
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the usernet daemon in the foreground",
		Long: "Run the daemon that holds the networks and sandboxes. Other commands start it on\n" +
			"demand; run it yourself to watch its log or choose its options. SIGTERM or SIGINT\n" +
			"stop it cleanly (its sandboxes are killed).",
		Args: cobra.NoArgs,
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return runDaemon(cmd.Context(), e, &o)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", "", "socket to listen on (default $"+api.SocketEnv+", $XDG_RUNTIME_DIR/usernet/usernet.sock or /tmp/usernet-UID/usernet.sock)")
	f.StringVar(&o.stateDir, "state-dir", "", "state directory (default $XDG_DATA_HOME/usernet or ~/.local/share/usernet)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.BoolVar(&o.disableHostLoopback, "disable-host-loopback", false, "stop sandboxes from reaching the host's 127.0.0.1 through their gateway")
	f.BoolVar(&o.tcpNetstack, "tcp-netstack", false, "carry sandboxes' outbound TCP through gVisor's netstack instead of translating it in the gateway (slower; to compare or fall back)")
	return cmd
}

// parseLevel reads --log-level.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

// runDaemon is `usernet daemon`: listen first (so a second daemon fails
// before touching the state), open the engine, serve until a signal.
func runDaemon(ctx context.Context, e *env, o *daemonOptions) error {
	level, err := parseLevel(o.logLevel)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(e.err, &slog.HandlerOptions{Level: level}))
	socket := o.socket
	if socket == "" {
		socket = api.DefaultSocketPath()
	}
	stateDir := o.stateDir
	if stateDir == "" {
		if stateDir, err = api.DefaultStateDir(); err != nil {
			return err
		}
	}

	// A soft memory limit that follows the live memory (memlimit.go); the
	// user's own GOMEMLIMIT wins.
	if os.Getenv("GOMEMLIMIT") == "" {
		go followMemory(ctx, daemonMemoryLimit, memoryLimitInterval)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(daemonProcs(runtime.NumCPU()))
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	l, err := api.Listen(socket, logger)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := servePprof(ctx, logger); err != nil {
		return err
	}
	eng, err := engine.New(ctx, engine.Config{
		StateDir:            stateDir,
		Logger:              logger,
		DisableHostLoopback: o.disableHostLoopback,
		TCPNetstack:         o.tcpNetstack,
	})
	if errors.Is(err, engine.ErrStateLocked) {
		// The socket was free but the state is not: another daemon of
		// this user serves the same state on another socket.
		return fmt.Errorf("the state in %s is held by another usernet daemon (is USERNET_SOCKET or --socket pointing at the wrong socket?)", stateDir)
	}
	if err != nil {
		return fmt.Errorf("open state in %s: %w", stateDir, err)
	}
	srv := api.NewServer(api.FromEngine(eng), logger)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	logger.Info("usernet daemon listening", "socket", socket, "state", stateDir, "pid", os.Getpid())

	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err = <-served:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	serr := srv.Shutdown(sctx)
	cerr := eng.Close()
	return errors.Join(err, serr, cerr)
}

// daemonProcs is the daemon's GOMAXPROCS on a machine with cpus CPUs:
// half of them, at least one. Every byte the daemon moves is also moved by
// a kernel on each side, the guest's behind its TAP and the host's behind
// a socket, and those need CPUs at the same moment. With a P per CPU, each
// goroutine hand-off on the data path (TAP reader, netstack processor,
// relay) wakes an idle P whose thread spins on another CPU and finds
// nothing, since the woken goroutine runs next on the waker's P. On
// 2 CPUs that spinning took the CPU the guest needed: one P moved
// 8.7-10.8 Gbit/s through a published port against 5.2-6.9 with two,
// with 40% less daemon CPU per Gbit, four streams included.
// The user's own GOMAXPROCS wins.
func daemonProcs(cpus int) int {
	return max(1, cpus/2)
}
