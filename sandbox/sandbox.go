// Package sandbox runs commands in rootless namespaces: a new user
// namespace (the caller's uid and gid mapped to root inside), mount, UTS
// and PID namespaces, and a new network namespace unless the network mode
// is NetHost.
//
// Start re-executes the running binary (/proc/self/exe) as the sandbox
// agent, which is PID 1 of the new PID namespace and stays for the
// sandbox's whole life. The agent does what only a process inside the
// namespaces can do for an unprivileged daemon (Go cannot setns into a
// user namespace, and setns into a network namespace owned by a child user
// namespace is refused): it brings lo up, creates the TAP device and
// configures it with rtnetlink, remounts /proc and /sys, bind-mounts
// /etc/resolv.conf and /etc/hosts, sets the hostname, and starts the
// command. It sends the TAP's fd to the daemon over the control channel
// (SCM_RIGHTS), forwards signals to the command, reaps orphans, runs
// further commands on request (Exec) and reports exit statuses.
//
// Because the agent is PID 1 of its PID namespace, its exit (when the
// command exits, on Kill, or when the daemon dies and the control channel
// reads EOF) takes every process in the sandbox with it; nothing is left
// behind.
//
// A binary that uses this package must call AgentMain first thing in main
// when os.Args[1] == AgentArg.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrExited is returned (wrapped) by Exec, Connect and Signal once the
// sandbox's agent has exited, and by Process.Wait for a process the agent
// could no longer report on.
var ErrExited = errors.New("sandbox has exited")

// Sandbox is a running sandbox, seen from the daemon. Its methods are safe
// for concurrent use. The sandbox lives until its command exits or Kill is
// called; Close must be called to release it either way.
type Sandbox struct {
	agent   *exec.Cmd
	ctl     *net.UnixConn
	logger  *slog.Logger
	netMode NetMode
	iface   string   // name of the TAP Start asks for
	tap     *os.File // set before main.started is closed
	bypass  BypassRoute
	sup     *supervisor // with bypass: set and closed by readLoop
	main    *Process
	exited  chan struct{} // closed once the agent has been reaped

	// mu guards the fields below; it is never held while writing to ctl.
	mu       sync.Mutex
	procs    map[uint64]*Process // started or starting, not yet exited
	requests map[uint64]*pending // Connect and DirectSockets requests awaiting their answer
	nextID   uint64              // shared by processes and requests
	killed   bool
	gone     bool // the control channel has closed: no more requests
}

// pending is one request to the agent in flight that is answered with
// fds: Connect (a TAP) or DirectSockets (sockets).
type pending struct {
	op    string                 // "sandbox connect", for errors
	reply string                 // the message kind that answers it
	check func(f *os.File) error // vets each fd the answer carries
	done  chan struct{}          // closed once files or err is set
	files []*os.File
	err   error
	// abandoned: the caller gave up (its ctx ended); the fds, when they
	// come, are closed instead of delivered.
	abandoned bool
}

// Process is a command running inside a sandbox: the main command or one
// started by Exec. Its methods are safe for concurrent use.
type Process struct {
	sb      *Sandbox
	id      uint64
	started chan struct{} // closed once pid or startErr is set
	pid     int
	// startErr is set before started is closed when the command did not start.
	startErr error
	done     chan struct{} // closed once code and err are final
	code     int
	err      error
}

// Start creates the sandbox's namespaces, starts spec's command inside and
// returns once the command is running (with the TAP fd received, for
// NetBridge). ctx bounds only the start: if it is done before Start
// returns, the sandbox is killed and Start returns ctx.Err(); cancelling it
// later does not affect the sandbox.
//
// A command that cannot be started is a *StartError (errors.Is(err,
// exec.ErrNotFound) for a missing one); the agent has exited and nothing
// is left behind when Start returns any error.
func Start(ctx context.Context, spec Spec) (*Sandbox, error) {
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	cfg := &agentConfig{
		Hostname:   spec.Hostname,
		Net:        spec.Net,
		ResolvConf: spec.ResolvConf,
		Hosts:      spec.Hosts,
		Bypass:     spec.Bypass != nil,
		Command:    execRequest{Args: spec.Args, Env: spec.Env, EnvSet: spec.Env != nil, Dir: spec.Dir, TTY: spec.TTY},
	}
	if spec.Net == NetBridge {
		iface := *spec.Iface
		if iface.MTU == 0 {
			iface.MTU = 1500
		}
		cfg.Iface = &iface
	}
	logger := spec.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	ours, theirs, err := controlPair()
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	flags := uintptr(unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWPID)
	if spec.Net != NetHost {
		flags |= unix.CLONE_NEWNET
	}
	agent := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{os.Args[0], AgentArg},
		ExtraFiles: []*os.File{theirs}, // fd 3
		Stderr:     os.Stderr,          // the agent's own diagnostics (a crash)
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:                 flags,
			UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
			GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
			GidMappingsEnableSetgroups: false,
			// Its own session, so terminal signals meant for the daemon
			// do not reach it. No Pdeathsig: Linux sends it when the
			// forking *thread* exits, which a Go program does not control;
			// the agent sees the daemon die as EOF on the control channel.
			Setsid: true,
		},
	}
	err = agent.Start()
	theirs.Close()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("sandbox: start agent in new user namespace (are unprivileged user namespaces enabled? see /proc/sys/user/max_user_namespaces): %w", err)
	}
	s := newSandbox(agent, ours, logger, spec.Net, cfg.Iface, spec.Bypass)
	err = s.send(&message{Kind: kindConfig, Config: cfg}, spec.Stdin, spec.Stdout, spec.Stderr)
	if err == nil {
		select {
		case <-s.main.started:
			err = s.main.startErr
		case <-ctx.Done():
		}
		if err == nil {
			// A cancelled start fails even if the command won the race.
			err = ctx.Err()
		}
	}
	if err != nil {
		s.Close() // waits for the read loop, so s.tap is settled
		if s.tap != nil {
			s.tap.Close()
		}
		var se *StartError
		if errors.As(err, &se) {
			return nil, err
		}
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	return s, nil
}

// newSandbox returns the daemon's side of a sandbox whose agent has been
// started, with its read loop running.
func newSandbox(agent *exec.Cmd, ctl *net.UnixConn, logger *slog.Logger, mode NetMode, iface *Iface, bypass BypassRoute) *Sandbox {
	s := &Sandbox{
		bypass:   bypass,
		agent:    agent,
		ctl:      ctl,
		logger:   logger.With("agent_pid", agent.Process.Pid),
		netMode:  mode,
		exited:   make(chan struct{}),
		procs:    make(map[uint64]*Process),
		requests: make(map[uint64]*pending),
		nextID:   1,
	}
	if iface != nil {
		s.iface = iface.Name
	}
	s.main = s.newProcess(0)
	s.procs[0] = s.main
	go s.readLoop()
	return s
}

// controlPair returns the daemon's end of a new control channel and the
// agent's end as a file to pass as fd 3.
func controlPair() (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("control socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "sandbox-control")
	theirs := os.NewFile(uintptr(fds[1]), "sandbox-control")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("control socket: %w", err)
	}
	return c.(*net.UnixConn), theirs, nil
}

// send writes one message, substituting /dev/null for nil stdio files.
func (s *Sandbox) send(m *message, stdio ...*os.File) error {
	files := make([]*os.File, len(stdio))
	for i, f := range stdio {
		if f != nil {
			files[i] = f
			continue
		}
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open %s for stdio: %w", os.DevNull, err)
		}
		defer null.Close()
		files[i] = null
	}
	return writeMessage(s.ctl, m, files...)
}

func (s *Sandbox) newProcess(id uint64) *Process {
	return &Process{sb: s, id: id, started: make(chan struct{}), done: make(chan struct{})}
}

// readLoop is the one goroutine that reads the control channel. It runs
// until the agent closes it (or it carries garbage, which is treated the
// same), then reaps the agent and settles every process still pending.
func (s *Sandbox) readLoop() {
	r := newReader(s.ctl)
	for {
		m, files, err := r.read()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.logger.Warn("sandbox control channel failed; killing the sandbox", "err", err)
				s.agent.Process.Kill()
			}
			break
		}
		if err := s.handle(m, files); err != nil {
			s.logger.Warn("bad message from sandbox agent; killing the sandbox", "err", err)
			s.agent.Process.Kill()
			break
		}
	}
	s.mu.Lock()
	s.gone = true
	s.mu.Unlock()
	if s.sup != nil {
		s.sup.close()
	}
	agentErr := s.agent.Wait()
	s.ctl.Close()

	s.mu.Lock()
	killed := s.killed
	procs := s.procs
	s.procs = nil
	for id, w := range s.requests {
		delete(s.requests, id)
		w.err = fmt.Errorf("%s: %w", w.op, ErrExited)
		close(w.done)
	}
	s.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.started:
		default:
			p.startErr = fmt.Errorf("agent exited before starting the command: %v", agentErr)
			close(p.started)
		}
		switch {
		case killed:
			p.code = 128 + int(syscall.SIGKILL)
		case p.id == 0:
			p.code, p.err = -1, fmt.Errorf("sandbox: agent exited without reporting the command's status: %v", agentErr)
		default:
			p.code, p.err = -1, fmt.Errorf("sandbox: %w", ErrExited)
		}
		close(p.done)
	}
	close(s.exited)
}

// handle applies one message from the agent, taking ownership of files.
// An error means the agent broke the protocol.
func (s *Sandbox) handle(m *message, files []*os.File) error {
	s.mu.Lock()
	w := s.requests[m.ID]
	if w != nil && (m.Kind == w.reply || m.Kind == kindFailed) {
		delete(s.requests, m.ID)
		s.mu.Unlock()
		return s.answered(w, m, files)
	}
	p := s.procs[m.ID]
	s.mu.Unlock()
	if p == nil || (m.Kind != kindStarted && m.Kind != kindFailed && m.Kind != kindExit) {
		closeFiles(files)
		return fmt.Errorf("unexpected %s message for request %d", m.Kind, m.ID)
	}
	select {
	case <-p.started:
		if m.Kind != kindExit {
			closeFiles(files)
			return fmt.Errorf("%s message for process %d, which has started", m.Kind, m.ID)
		}
	default:
		if m.Kind == kindExit {
			return fmt.Errorf("exit message for process %d, which has not started", m.ID)
		}
	}
	for _, w := range m.Warnings {
		s.logger.Warn("sandbox agent", "warning", w)
	}
	switch m.Kind {
	case kindStarted:
		if m.ID == 0 {
			if err := s.checkMainTAP(files); err != nil {
				closeFiles(files)
				return err
			}
			if len(files) > 0 {
				s.tap = files[0]
			}
			if s.bypass != nil {
				sup, err := startSupervisor(files[1], s.agent.Process.Pid, s.bypass, s.logger)
				if err != nil {
					s.tap.Close()
					s.tap = nil
					return err
				}
				s.sup = sup
			}
		}
		p.pid = m.Pid
		close(p.started)
	case kindFailed:
		p.startErr = m.Error.err()
		close(p.started)
		if m.ID != 0 {
			s.finish(p, 0, p.startErr)
		}
	case kindExit:
		s.finish(p, m.Code, nil)
	}
	return nil
}

// checkMainTAP checks the fds that came with the main command's start:
// the TAP for NetBridge (and the bypass listener after it), nothing
// otherwise.
func (s *Sandbox) checkMainTAP(files []*os.File) error {
	switch {
	case s.netMode != NetBridge && len(files) == 0:
		return nil
	case s.netMode != NetBridge:
		return fmt.Errorf("agent sent an fd for network mode %v", s.netMode)
	case s.bypass == nil && len(files) != 1:
		return errors.New("agent started the command without sending the TAP")
	case s.bypass != nil && len(files) != 2:
		return errors.New("agent started the command without sending the TAP and the bypass listener")
	}
	if s.bypass != nil {
		if err := checkListener(files[1]); err != nil {
			return err
		}
	}
	return checkTAP(files[0], s.iface)
}

// answered settles a request with the agent's answer. Bad fds are a
// broken protocol: the agent shares its user namespace with the command.
func (s *Sandbox) answered(w *pending, m *message, files []*os.File) error {
	if m.Kind == kindFailed {
		closeFiles(files)
		w.err = fmt.Errorf("%s: %w", w.op, m.Error.err())
	} else {
		for _, f := range files {
			if err := w.check(f); err != nil {
				closeFiles(files)
				return err
			}
		}
		w.files = files
	}
	s.mu.Lock()
	abandoned := w.abandoned
	s.mu.Unlock()
	if abandoned {
		closeFiles(w.files)
		w.files = nil
	}
	close(w.done)
	return nil
}

// request sends m, which w answers, and waits for the answer or ctx.
func (s *Sandbox) request(ctx context.Context, m *message, w *pending) ([]*os.File, error) {
	w.done = make(chan struct{})
	s.mu.Lock()
	if s.gone {
		s.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", w.op, ErrExited)
	}
	m.ID = s.nextID
	s.nextID++
	s.requests[m.ID] = w
	s.mu.Unlock()

	if err := writeMessage(s.ctl, m); err != nil {
		s.mu.Lock()
		delete(s.requests, m.ID)
		s.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", w.op, err)
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		s.mu.Lock()
		_, pending := s.requests[m.ID]
		w.abandoned = pending
		s.mu.Unlock()
		if pending {
			return nil, fmt.Errorf("%s: %w", w.op, ctx.Err())
		}
		<-w.done // being settled right now
	}
	return w.files, w.err
}

// checkTAP verifies with TUNGETIFF that f is the vnet-header TAP called
// name: the agent shares its user namespace with the command, so what it
// sends is checked before the daemon plugs it into a switch.
func checkTAP(f *os.File, name string) error {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("check TAP %s: %w", name, err)
	}
	cerr := rc.Control(func(fd uintptr) { err = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr) })
	if err = errors.Join(cerr, err); err != nil {
		return fmt.Errorf("check TAP %s: TUNGETIFF: %w", name, err)
	}
	const want = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if got := ifr.Uint16(); got&want != want || ifr.Name() != name {
		return fmt.Errorf("check TAP %s: agent sent %q with flags %#x, want %#x", name, ifr.Name(), got, want)
	}
	return nil
}

// finish records a process's end and forgets it.
func (s *Sandbox) finish(p *Process, code int, err error) {
	s.mu.Lock()
	delete(s.procs, p.id)
	s.mu.Unlock()
	p.code, p.err = code, err
	close(p.done)
}

// TAP returns the sandbox's TAP device (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR),
// created inside its network namespace by the agent, or nil unless the
// network mode is NetBridge. The caller owns the file (stack.NewTAP takes
// it over); the Sandbox never closes it, and the device disappears from
// the sandbox once it is closed (which can take the kernel 100 ms or more:
// keep it off latency-sensitive paths). The command is already running:
// frames it sends before the TAP is attached wait in the device's queue
// (txqueuelen, 1000 frames).
func (s *Sandbox) TAP() *os.File { return s.tap }

// Pid returns the host pid of the agent, the sandbox's PID 1. Signals sent
// to it (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH) are
// forwarded to the command.
func (s *Sandbox) Pid() int { return s.agent.Process.Pid }

// Wait waits until the command has exited and the agent (with every other
// process in the sandbox) is gone, and returns the command's exit status:
// its exit code, or 128+n when killed by signal n (137 after Kill). The
// error is non-nil only when the agent died without reporting a status.
func (s *Sandbox) Wait() (exitCode int, err error) {
	<-s.exited
	return s.main.code, s.main.err
}

// Signal delivers sig to the command through the agent.
func (s *Sandbox) Signal(sig syscall.Signal) error { return s.main.Signal(sig) }

// Exec starts another command inside the sandbox's namespaces, as a child
// of the agent. It returns once the command is running, or a *StartError
// if it could not be started. Processes started by Exec are killed when
// the main command exits.
func (s *Sandbox) Exec(spec ExecSpec) (*Process, error) {
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("sandbox exec: %w", err)
	}
	s.mu.Lock()
	if s.gone {
		s.mu.Unlock()
		return nil, fmt.Errorf("sandbox exec: %w", ErrExited)
	}
	p := s.newProcess(s.nextID)
	s.nextID++
	s.procs[p.id] = p
	s.mu.Unlock()

	req := &execRequest{Args: spec.Args, Env: spec.Env, EnvSet: spec.Env != nil, Dir: spec.Dir, TTY: spec.TTY}
	if err := s.send(&message{Kind: kindExec, ID: p.id, Exec: req}, spec.Stdin, spec.Stdout, spec.Stderr); err != nil {
		s.mu.Lock()
		delete(s.procs, p.id)
		s.mu.Unlock()
		return nil, fmt.Errorf("sandbox exec: %w", err)
	}
	<-p.started
	if p.startErr != nil {
		var se *StartError
		if errors.As(p.startErr, &se) {
			return nil, p.startErr
		}
		return nil, fmt.Errorf("sandbox exec: %w", p.startErr)
	}
	return p, nil
}

// Connect creates another TAP device inside the sandbox's network
// namespace, configured as iface says (docker network connect), and
// returns its fd, which the caller owns like TAP's. A zero iface.Gateway
// adds no default route (the first network usually keeps it).
// Disconnecting is closing the file: the device disappears with its last
// fd. Connect fails for NetHost, whose namespace is the daemon's.
func (s *Sandbox) Connect(ctx context.Context, iface Iface) (*os.File, error) {
	if s.netMode == NetHost {
		return nil, errors.New("sandbox connect: a sandbox with the host's network cannot be connected to another network")
	}
	if err := iface.validate(); err != nil {
		return nil, fmt.Errorf("sandbox connect: %w", err)
	}
	if iface.MTU == 0 {
		iface.MTU = 1500
	}
	name := iface.Name
	files, err := s.request(ctx, &message{Kind: kindConnect, Iface: &iface}, &pending{
		op:    "sandbox connect",
		reply: kindTAP,
		check: func(f *os.File) error { return checkTAP(f, name) },
	})
	if err != nil {
		return nil, err
	}
	return files[0], nil
}

// Kill kills every process in the sandbox at once (SIGKILL to the agent,
// which takes its PID namespace with it). Wait then returns 137.
func (s *Sandbox) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return nil
	}
	s.killed = true
	if err := s.agent.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sandbox kill: %w", err)
	}
	return nil
}

// Close kills the sandbox if it is still running, waits for it to be gone
// and releases the control channel. It does not close the TAP (see TAP).
// It is safe to call more than once.
func (s *Sandbox) Close() error {
	err := s.Kill()
	<-s.exited
	return err
}

// Pid returns the process's pid inside the sandbox's PID namespace (the
// main command's parent, the agent, is 1).
func (p *Process) Pid() int { return p.pid }

// Wait waits for the process to exit and returns its exit code, or 128+n
// when it was killed by signal n. The error is non-nil when its status is
// unknown because the sandbox went away first.
func (p *Process) Wait() (exitCode int, err error) {
	<-p.done
	return p.code, p.err
}

// Signal delivers sig to the process through the agent. It returns
// os.ErrProcessDone once the process has exited.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	s := p.sb
	s.mu.Lock()
	gone := s.gone
	s.mu.Unlock()
	if gone {
		return fmt.Errorf("sandbox signal: %w", ErrExited)
	}
	if err := writeMessage(s.ctl, &message{Kind: kindSignal, ID: p.id, Signal: int(sig)}); err != nil {
		return fmt.Errorf("sandbox signal: %w", err)
	}
	return nil
}
