package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// The control channel is one end of a SOCK_SEQPACKET socketpair per
// sandbox: the daemon keeps one end, the agent gets the other as fd 3. Each
// message is one JSON object in one packet, with any fds it carries
// attached as SCM_RIGHTS. The conversation:
//
//  1. daemon -> agent  config  {Config}            fds: stdin, stdout, stderr of the command
//  2. agent -> daemon  started {ID 0, Pid}         fds: the TAP (NetBridge only)
//     or               failed  {ID 0, Error}       (the agent then exits)
//  3. daemon -> agent  exec    {ID n, Exec}        fds: stdin, stdout, stderr
//     agent -> daemon  started {ID n, Pid} | failed {ID n, Error}
//  4. daemon -> agent  signal  {ID, Signal}        (ID 0 is the main command)
//  5. daemon -> agent  connect {ID n, Iface}       (a further network)
//     agent -> daemon  tap     {ID n}              fds: the new TAP
//     or               failed  {ID n, Error}
//  6. daemon -> agent  direct  {ID n, Count k}     (sockets for published ports, direct.go)
//     agent -> daemon  sockets {ID n}              fds: 1..k prepared TCP sockets
//     or               failed  {ID n, Error}
//  7. agent -> daemon  exit    {ID, Code}          once per started process; ID 0 last,
//     after which the agent exits and the socket reads EOF.
//
// The agent shares a user namespace with the command, which is root there
// and could take it over, so the daemon treats everything it reads as
// untrusted input: decodeMessage bounds sizes, kinds and fd counts,
// Sandbox.handle checks the order, and checkTAP checks any TAP it sends.

// maxMessage bounds one control message. SOCK_SEQPACKET needs the whole
// message to fit the sender's socket buffer (208 KiB by default, and an
// unprivileged process cannot raise it), so stay well below.
const maxMessage = 64 << 10

// maxFDs bounds the fds one message may carry: a batch of direct
// sockets is the most.
const maxFDs = maxDirectBatch

const (
	kindConfig  = "config"
	kindExec    = "exec"
	kindSignal  = "signal"
	kindStarted = "started"
	kindFailed  = "failed"
	kindExit    = "exit"
	kindConnect = "connect"
	kindTAP     = "tap"
	kindDirect  = "direct"
	kindSockets = "sockets"
)

// message is the single wire type; Kind says which fields matter.
type message struct {
	Kind     string       `json:"kind"`
	ID       uint64       `json:"id,omitempty"`
	Config   *agentConfig `json:"config,omitempty"`
	Iface    *Iface       `json:"iface,omitempty"`
	Exec     *execRequest `json:"exec,omitempty"`
	Signal   int          `json:"signal,omitempty"`
	Pid      int          `json:"pid,omitempty"`
	Code     int          `json:"code,omitempty"`
	Count    int          `json:"count,omitempty"`
	Error    *wireError   `json:"error,omitempty"`
	Warnings []string     `json:"warnings,omitempty"`
}

// agentConfig is what the agent needs from Spec.
type agentConfig struct {
	Hostname   string  `json:"hostname,omitempty"`
	Net        NetMode `json:"net"`
	Iface      *Iface  `json:"iface,omitempty"`
	ResolvConf []byte  `json:"resolvConf,omitempty"`
	Hosts      []byte  `json:"hosts,omitempty"`
	// Bypass: start commands under the connect filter and send its
	// listener with the main command's start (bypass.go).
	Bypass  bool        `json:"bypass,omitempty"`
	Command execRequest `json:"command"`
}

// execRequest is a command to start inside; the stdio fds travel beside it.
type execRequest struct {
	Args []string `json:"args"`
	Env  []string `json:"env,omitempty"`
	// EnvSet distinguishes an empty environment from "inherit" (nil Env).
	EnvSet bool   `json:"envSet,omitempty"`
	Dir    string `json:"dir,omitempty"`
	TTY    bool   `json:"tty,omitempty"`
}

// wireError carries an agent-side failure so the daemon can rebuild an
// error that errors.Is and errors.As can match (exec.ErrNotFound,
// *exec.Error, *os.PathError, syscall errnos).
type wireError struct {
	// Msg is the whole message, used when nothing more specific applies.
	Msg string `json:"msg"`
	// Command reports whether the command itself failed to start (as
	// opposed to the sandbox's setup).
	Command bool `json:"command,omitempty"`
	// Name is the command name of an *exec.Error, if the error was one.
	Name string `json:"name,omitempty"`
	// NotFound: the command was not found in PATH.
	NotFound bool `json:"notFound,omitempty"`
	// Op and Path rebuild an *os.PathError around Errno.
	Op    string `json:"op,omitempty"`
	Path  string `json:"path,omitempty"`
	Errno int    `json:"errno,omitempty"`
}

// StartError reports that a command could not be started inside the
// sandbox. Code is the exit status a shell gives for the same failure: 127
// when the command was not found, 126 when it could not be executed.
// Error returns the underlying error's message, e.g.
// exec: "nosuch": executable file not found in $PATH.
type StartError struct {
	Code int
	Err  error
}

// Error returns the underlying error's message unchanged.
func (e *StartError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error: an *exec.Error from the lookup or
// an *os.PathError from fork/exec.
func (e *StartError) Unwrap() error { return e.Err }

// toWire describes err for the daemon. command says the failure was the
// command's own (lookup or exec), not the sandbox's setup.
func toWire(err error, command bool) *wireError {
	w := &wireError{Msg: err.Error(), Command: command}
	var ee *exec.Error
	if errors.As(err, &ee) {
		w.Name, err = ee.Name, ee.Err
	}
	if errors.Is(err, exec.ErrNotFound) {
		w.NotFound = true
		return w
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		w.Op, w.Path, err = pe.Op, pe.Path, pe.Err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		w.Errno = int(errno)
	}
	return w
}

// err rebuilds the agent's error on the daemon side.
func (w *wireError) err() error {
	if !w.Command {
		return errors.New(w.Msg)
	}
	var inner error
	code := 126
	switch {
	case w.NotFound:
		inner, code = exec.ErrNotFound, 127
	case w.Errno > 0 && w.Errno < 4096:
		inner = syscall.Errno(w.Errno)
		if inner == syscall.ENOENT {
			code = 127
		}
		if w.Op != "" {
			inner = &os.PathError{Op: w.Op, Path: w.Path, Err: inner}
		}
	default:
		return &StartError{Code: code, Err: errors.New(w.Msg)}
	}
	if w.Name != "" {
		inner = &exec.Error{Name: w.Name, Err: inner}
	}
	return &StartError{Code: code, Err: inner}
}

// writeMessage sends m with files attached. The files stay open and owned
// by the caller.
func writeMessage(c *net.UnixConn, m *message, files ...*os.File) error {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	err := writeMessageFDs(c, m, fds)
	runtime.KeepAlive(files)
	return err
}

// writeMessageFDs sends m with bare descriptors attached; they stay open
// and owned by the caller.
func writeMessageFDs(c *net.UnixConn, m *message, fds []int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s message: %w", m.Kind, err)
	}
	if len(b) > maxMessage {
		return fmt.Errorf("%s message is %d bytes, over the control channel's %d (arguments, environment or /etc files too large)", m.Kind, len(b), maxMessage)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("send %s message: %w", m.Kind, err)
	}
	return nil
}

// reader reads control messages; its buffers are reused, so one reader
// serves one goroutine.
type reader struct {
	c   *net.UnixConn
	buf []byte
	oob []byte
}

func newReader(c *net.UnixConn) *reader {
	return &reader{c: c, buf: make([]byte, maxMessage+1), oob: make([]byte, unix.CmsgSpace(4*maxFDs)+64)}
}

// read returns the next message and the fds that came with it (close-on-
// exec, owned by the caller). It returns io.EOF when the peer has closed.
// A malformed message is an error after its fds have been closed: the
// stream of packets stays usable, but callers treat it as fatal anyway.
func (r *reader) read() (*message, []*os.File, error) {
	n, oobn, flags, _, err := r.c.ReadMsgUnix(r.buf, r.oob)
	if err != nil {
		return nil, nil, err
	}
	files, ferr := parseRights(r.oob[:oobn])
	if ferr == nil && flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		ferr = errors.New("truncated control message")
	}
	if ferr == nil && n == 0 && len(files) == 0 {
		return nil, nil, io.EOF
	}
	var m *message
	if ferr == nil {
		m, ferr = decodeMessage(r.buf[:n], len(files))
	}
	if ferr != nil {
		closeFiles(files)
		return nil, nil, ferr
	}
	return m, files, nil
}

// parseRights extracts SCM_RIGHTS fds from a control buffer. Any fds
// parsed before an error are closed.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var files []*os.File
	for _, cm := range cmsgs {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue // not SCM_RIGHTS (credentials); nothing to close
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "control-fd"))
		}
	}
	if len(files) > maxFDs {
		closeFiles(files)
		return nil, fmt.Errorf("control message carries %d fds, more than %d", len(files), maxFDs)
	}
	return files, nil
}

// decodeMessage parses one packet and checks that the number of fds that
// came with it fits its kind.
func decodeMessage(b []byte, nfds int) (*message, error) {
	var m message
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode control message: %w", err)
	}
	if d.More() {
		return nil, errors.New("decode control message: trailing data")
	}
	want := 0
	switch m.Kind {
	case kindConfig:
		if m.Config == nil || len(m.Config.Command.Args) == 0 {
			return nil, errors.New("config message without a command")
		}
		want = 3
	case kindExec:
		if m.Exec == nil || len(m.Exec.Args) == 0 {
			return nil, errors.New("exec message without a command")
		}
		want = 3
	case kindSignal:
		if m.Signal <= 0 || m.Signal >= 65 {
			return nil, fmt.Errorf("signal message with signal %d", m.Signal)
		}
	case kindStarted:
		if m.Pid <= 0 {
			return nil, fmt.Errorf("started message with pid %d", m.Pid)
		}
		if m.ID == 0 && nfds <= 2 {
			want = nfds // the TAP, when there is one, and the bypass listener
		}
	case kindConnect:
		if m.ID == 0 || m.Iface == nil {
			return nil, errors.New("connect message without an ID or interface")
		}
	case kindTAP:
		if m.ID == 0 {
			return nil, errors.New("tap message without an ID")
		}
		want = 1
	case kindDirect:
		if m.ID == 0 || m.Count < 1 || m.Count > maxDirectBatch {
			return nil, fmt.Errorf("direct message with ID %d and count %d", m.ID, m.Count)
		}
	case kindSockets:
		if m.ID == 0 || nfds < 1 {
			return nil, errors.New("sockets message without an ID or sockets")
		}
		want = nfds // parseRights has bounded it
	case kindFailed:
		if m.Error == nil {
			return nil, errors.New("failed message without an error")
		}
	case kindExit:
		if m.Code < 0 || m.Code > 255 {
			return nil, fmt.Errorf("exit message with status %d", m.Code)
		}
	default:
		return nil, fmt.Errorf("unknown control message kind %q", m.Kind)
	}
	if nfds != want {
		return nil, fmt.Errorf("%s message carries %d fds, want %d", m.Kind, nfds, want)
	}
	return &m, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}
