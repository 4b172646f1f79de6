package sandbox

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// AgentArg is the os.Args[1] with which Start re-executes the binary as
// the sandbox agent.
const AgentArg = "__usernet-sandbox-agent"

// controlFD is the fd at which the agent finds its end of the control
// channel (Start passes it as the first ExtraFiles entry).
const controlFD = 3

// defaultPath is searched when the command's environment has no PATH
// (Docker's default).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// forwarded are the signals the agent passes on to the main command.
var forwarded = []os.Signal{
	unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT,
	unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH,
}

// AgentMain runs the sandbox agent and exits the process; it never
// returns. A binary that calls Start must call it first thing in main,
// before doing anything else, when len(os.Args) > 1 && os.Args[1] ==
// AgentArg:
//
//	if len(os.Args) > 1 && os.Args[1] == sandbox.AgentArg {
//		sandbox.AgentMain()
//	}
func AgentMain() {
	code, err := runAgent()
	if err != nil {
		fmt.Fprintf(os.Stderr, "usernet sandbox agent: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// agent is the state of the sandbox's PID 1. Everything after the start
// runs on one goroutine (loop), so reaping, signalling and answering
// requests never race: a pid is only signalled while the agent knows it
// has not been reaped, so it cannot have been reused.
type agent struct {
	ctl   *net.UnixConn
	net   NetMode
	procs map[int]uint64 // pid -> request ID, for running commands we started
	main  int            // pid of the main command
	// ttys holds the pty relays of running commands started with TTY,
	// by pid; an entry goes when its command is reaped.
	ttys map[int]*ptyRelay
	// devpts reports whether the agent has mounted a devpts of its own.
	devpts bool
	// directReady: the routing for direct sockets is set up (direct.go).
	directReady bool
	// draining counts exec exit reports waiting for their pty to drain
	// on goroutines of their own; the main command's report, which must
	// be the last message, waits for them.
	draining sync.WaitGroup
}

// errNoPTY marks a failure to allocate a command's pseudo-terminal: the
// sandbox's fault, not the command's.
var errNoPTY = errors.New("cannot allocate a pseudo-terminal")

// runAgent returns the exit status the agent process ends with: the main
// command's, so that even a daemon that lost the control channel sees it.
func runAgent() (int, error) {
	closeInherited()
	f := os.NewFile(controlFD, "sandbox-control")
	c, err := net.FileConn(f) // a close-on-exec dup: commands must not inherit it
	f.Close()
	if err != nil {
		return 1, fmt.Errorf("control channel: %w", err)
	}
	ctl := c.(*net.UnixConn)
	r := newReader(ctl)
	m, stdio, err := r.read()
	if err != nil {
		return 1, fmt.Errorf("read config: %w", err)
	}
	if m.Kind != kindConfig {
		closeFiles(stdio)
		return 1, fmt.Errorf("first control message is %q, want %q", m.Kind, kindConfig)
	}
	a := &agent{ctl: ctl, net: m.Config.Net, procs: make(map[int]uint64), ttys: make(map[int]*ptyRelay)}

	// Subscribe before the command exists, so neither its SIGCHLD nor a
	// signal for it is lost.
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	fwd := make(chan os.Signal, 16)
	signal.Notify(fwd, forwarded...)

	tap, warnings, err := setup(m.Config)
	if err != nil {
		closeFiles(stdio)
		a.reply(&message{Kind: kindFailed, Error: toWire(err, false)})
		return 1, nil
	}
	var listener *os.File
	if m.Config.Bypass {
		// Never unlocked: this goroutine starts every command (loop
		// serves on it), and the filter is on this thread alone.
		runtime.LockOSThread()
		if listener, err = installConnectFilter(); err != nil {
			if tap != nil {
				tap.Close()
			}
			closeFiles(stdio)
			a.reply(&message{Kind: kindFailed, Error: toWire(fmt.Errorf("bypass: %w", err), false)})
			return 1, nil
		}
	}
	pid, err := a.start(&m.Config.Command, stdio)
	if err != nil {
		if tap != nil {
			tap.Close()
		}
		if listener != nil {
			listener.Close()
		}
		a.reply(&message{Kind: kindFailed, Error: toWire(err, !errors.Is(err, errNoPTY))})
		return 127, nil
	}
	a.main = pid
	a.procs[pid] = 0
	started := &message{Kind: kindStarted, Pid: pid, Warnings: warnings}
	var files []*os.File
	for _, f := range []*os.File{tap, listener} {
		if f != nil {
			files = append(files, f)
		}
	}
	err = writeMessage(ctl, started, files...)
	// The daemon's copies are now the only ones. The listener's must
	// be: while any copy is open, a connect nobody answers waits.
	closeFiles(files)
	if err != nil {
		return 1, err
	}
	return a.loop(r, sigchld, fwd)
}

// closeInherited marks every fd above stdio close-on-exec. The daemon's
// own non-close-on-exec fds (ones it inherited, which Go leaves as they
// are) reach the agent through os/exec; without this they would reach the
// command too.
func closeInherited() {
	if unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	// Before Linux 5.11.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// reply sends m, ignoring failure: the daemon is gone and the agent's
// exit will take the sandbox down anyway.
func (a *agent) reply(m *message, files ...*os.File) { _ = writeMessage(a.ctl, m, files...) }

// connect creates a further TAP device.
func (a *agent) connect(ifc *Iface) (*os.File, error) {
	if a.net == NetHost {
		return nil, errors.New("the sandbox uses the host's network namespace")
	}
	if err := ifc.validate(); err != nil {
		return nil, err
	}
	nl, err := dialRoute()
	if err != nil {
		return nil, err
	}
	defer nl.close()
	return createIface(nl, ifc)
}

// request is a message from the daemon with its fds.
type request struct {
	m     *message
	stdio []*os.File
}

// loop serves the sandbox until the main command exits (returning its
// status) or the daemon goes away (returning 137 after killing
// everything: the agent's exit tears down the PID namespace).
func (a *agent) loop(r *reader, sigchld, fwd <-chan os.Signal) (int, error) {
	reqs := make(chan request)
	go func() {
		defer close(reqs)
		for {
			m, files, err := r.read()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					fmt.Fprintf(os.Stderr, "usernet sandbox agent: control channel: %v\n", err)
				}
				return
			}
			reqs <- request{m, files}
		}
	}()
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				return 128 + int(unix.SIGKILL), nil
			}
			a.serve(req)
		case sig := <-fwd:
			a.signal(a.main, sig.(syscall.Signal))
		case <-sigchld:
			if code, done := a.reap(); done {
				return code, nil
			}
		}
	}
}

// serve answers one request from the daemon.
func (a *agent) serve(req request) {
	m := req.m
	switch m.Kind {
	case kindExec:
		pid, err := a.start(m.Exec, req.stdio)
		if err != nil {
			a.reply(&message{Kind: kindFailed, ID: m.ID, Error: toWire(err, !errors.Is(err, errNoPTY))})
			return
		}
		a.procs[pid] = m.ID
		a.reply(&message{Kind: kindStarted, ID: m.ID, Pid: pid})
	case kindConnect:
		tap, err := a.connect(m.Iface)
		if err != nil {
			a.reply(&message{Kind: kindFailed, ID: m.ID, Error: toWire(err, false)})
			return
		}
		a.reply(&message{Kind: kindTAP, ID: m.ID}, tap)
		tap.Close() // the daemon's copy is now the only one
	case kindDirect:
		socks, err := a.directSockets(m.Count)
		if err != nil {
			a.reply(&message{Kind: kindFailed, ID: m.ID, Error: toWire(err, false)})
			return
		}
		_ = writeMessageFDs(a.ctl, &message{Kind: kindSockets, ID: m.ID}, socks)
		closeFDs(socks) // the daemon's copies are now the only ones
	case kindSignal:
		for pid, id := range a.procs {
			if id == m.ID {
				a.signal(pid, syscall.Signal(m.Signal))
			}
		}
	default:
		closeFiles(req.stdio)
	}
}

// signal delivers sig to a running command. SIGWINCH for a command on a
// pty means "the user's terminal was resized": the agent copies the new
// size to the pty and the kernel signals the pty's foreground process
// group, which is the process that cares (a shell's current job), not
// necessarily the command itself.
func (a *agent) signal(pid int, sig syscall.Signal) {
	if r := a.ttys[pid]; r != nil && sig == unix.SIGWINCH {
		if err := r.resize(); err != nil {
			fmt.Fprintf(os.Stderr, "usernet sandbox agent: %v\n", err)
		}
		return
	}
	// ESRCH: the command exited and its SIGCHLD is on its way.
	_ = unix.Kill(pid, sig)
}

// start starts req, taking ownership of stdio. With TTY the command gets a
// new pty and the agent relays it to stdio[0] and stdio[1] (a terminal
// merges stderr into its output, so stdio[2] is not used).
func (a *agent) start(req *execRequest, stdio []*os.File) (int, error) {
	if !req.TTY {
		defer closeFiles(stdio)
		return startCommand(req, stdio)
	}
	stdio[2].Close()
	ptm, pts, err := openPTY(&a.devpts)
	if err != nil {
		closeFiles(stdio[:2])
		return 0, fmt.Errorf("%w: %w", errNoPTY, err)
	}
	defer pts.Close() // the command holds its own copies
	r, err := newPTYRelay(ptm, stdio[0], stdio[1])
	if err != nil {
		unix.Close(ptm)
		closeFiles(stdio[:2])
		return 0, fmt.Errorf("%w: %w", errNoPTY, err)
	}
	if err := r.resize(); err != nil {
		r.close()
		return 0, fmt.Errorf("%w: %w", errNoPTY, err)
	}
	pid, err := startCommand(req, []*os.File{pts, pts, pts})
	if err != nil {
		r.close()
		return 0, err
	}
	a.ttys[pid] = r
	go r.run()
	return pid, nil
}

// exited reports that the command pid, started for request id, exited
// with code. A command on a pty is reported only once its output has
// been drained, on a goroutine of its own: a user's terminal that does
// not take the output must not stall the agent.
func (a *agent) exited(pid int, id uint64, code int) {
	r := a.ttys[pid]
	delete(a.ttys, pid)
	if r == nil {
		a.reply(&message{Kind: kindExit, ID: id, Code: code})
		return
	}
	a.draining.Add(1)
	go func() {
		defer a.draining.Done()
		r.stop()
		a.reply(&message{Kind: kindExit, ID: id, Code: code})
	}()
}

// reap collects every child that has exited: commands it started (whose
// status it reports) and orphans that were reparented to it. When the main
// command is among them it kills and reaps the other commands, reports
// them, then (once every pty has been drained) the main command, and
// returns the main command's status.
func (a *agent) reap() (code int, done bool) {
	mainCode, mainDone := 0, false
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			break
		}
		id, ok := a.procs[pid]
		if !ok {
			continue // an orphan
		}
		delete(a.procs, pid)
		if id == 0 {
			mainCode, mainDone = exitCode(ws), true
			continue
		}
		a.exited(pid, id, exitCode(ws))
	}
	if !mainDone {
		return 0, false
	}
	for pid := range a.procs {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	for len(a.procs) > 0 {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			break
		}
		if id, ok := a.procs[pid]; ok {
			delete(a.procs, pid)
			a.exited(pid, id, exitCode(ws))
		}
	}
	if r := a.ttys[a.main]; r != nil {
		delete(a.ttys, a.main)
		r.stop()
	}
	a.draining.Wait()
	a.reply(&message{Kind: kindExit, Code: mainCode})
	return mainCode, true
}

// exitCode converts a wait status to the shell's convention.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// startCommand starts req with stdio as fds 0, 1, 2 and returns its pid.
// The agent reaps it (never os/exec's Wait, which would race with reaping
// orphans).
func startCommand(req *execRequest, stdio []*os.File) (int, error) {
	env := req.Env
	if !req.EnvSet {
		env = os.Environ()
	}
	dir := req.Dir
	if dir == "" {
		dir = "/"
	}
	if fi, err := os.Stat(dir); err != nil {
		return 0, err
	} else if !fi.IsDir() {
		return 0, &os.PathError{Op: "chdir", Path: dir, Err: unix.ENOTDIR}
	}
	path, err := lookPath(req.Args[0], env, dir)
	if err != nil {
		return 0, err
	}
	attr := &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []uintptr{stdio[0].Fd(), stdio[1].Fd(), stdio[2].Fd()},
		// Ctty is an fd number in the child: its stdin, the new pty's
		// replica (see start), which controls no session yet.
		Sys: &syscall.SysProcAttr{Setsid: req.TTY, Setctty: req.TTY, Ctty: 0},
	}
	pid, err := syscall.ForkExec(path, req.Args, attr)
	if err != nil {
		return 0, &os.PathError{Op: "fork/exec", Path: path, Err: err}
	}
	return pid, nil
}

// lookPath finds file the way a shell inside the sandbox would: in the
// PATH of the command's own environment, not the agent's.
func lookPath(file string, env []string, dir string) (string, error) {
	if strings.Contains(file, "/") {
		p := file
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := executable(p); err != nil {
			return "", &exec.Error{Name: file, Err: err}
		}
		return p, nil
	}
	path := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v // the last one wins, as in os/exec
		}
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		if p := filepath.Join(d, file); executable(p) == nil {
			return p, nil
		}
	}
	return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
}

// executable reports why p cannot be executed, or nil.
func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return unix.EACCES // "permission denied", as a shell says
	}
	return unix.Faccessat(unix.AT_FDCWD, p, unix.X_OK, unix.AT_EACCESS)
}
