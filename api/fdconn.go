package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Passing file descriptors next to HTTP.
//
// A client that hands the daemon its stdin, stdout and stderr (run, exec)
// does this on a fresh connection:
//
//  1. It writes the preamble: the 4 bytes "UNFD" and one byte n, sent with
//     sendmsg and n descriptors as SCM_RIGHTS ancillary data.
//  2. It sends exactly one HTTP request on the same connection and reads
//     the response (which may stream until the command exits).
//
// The server's listener (WrapListener) accepts only connections whose peer
// runs as the daemon's uid (SO_PEERCRED), and its connections read the
// preamble lazily on the first Read, on the serving goroutine, so a slow
// client never holds up Accept. Bytes that are not a preamble (curl
// --unix-socket, ordinary client calls) are replayed to the HTTP server
// untouched. A handler takes the descriptors with takeFiles; whatever it
// leaves is closed with the connection.

// preambleMagic starts a descriptor-passing preamble.
const preambleMagic = "UNFD"

// preambleLen is the preamble's length: magic plus the count byte.
const preambleLen = len(preambleMagic) + 1

// maxPassedFiles is the most descriptors one connection may carry; run and
// exec need three.
const maxPassedFiles = 3

// WrapListener returns a listener that accepts only connections from
// processes running as uid and that understands the descriptor-passing
// preamble; connections from anyone else are closed at once and logged.
// The returned listener owns l.
func WrapListener(l *net.UnixListener, uid int, logger *slog.Logger) net.Listener {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &listener{UnixListener: l, uid: uid, log: logger}
}

// listener is the net.Listener WrapListener returns.
type listener struct {
	*net.UnixListener
	uid int
	log *slog.Logger
}

// Accept waits for the next connection from the owning uid.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		if err != nil {
			l.log.Warn("rejecting connection: cannot read peer credentials", "err", err)
			c.Close()
			continue
		}
		if int(cred.Uid) != l.uid {
			l.log.Warn("rejecting connection from another user", "uid", cred.Uid, "pid", cred.Pid)
			c.Close()
			continue
		}
		return &fdConn{UnixConn: c}, nil
	}
}

// peerCred returns the credentials of the process that connected c.
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peer credentials: %w", credErr)
	}
	return cred, nil
}

// fdConn is a server-side connection that may start with a preamble. Read
// is called only by the HTTP server's goroutine for the connection; files
// and closed are also touched by the handler and Close, under mu.
type fdConn struct {
	*net.UnixConn

	readPreamble bool   // the first Read has looked for a preamble
	preambleErr  error  // what went wrong with it; every later Read fails too
	pending      []byte // bytes read past the preamble, replayed first

	mu     sync.Mutex
	files  []*os.File
	closed bool
}

// Read returns the connection's bytes with any preamble removed.
func (c *fdConn) Read(p []byte) (int, error) {
	if !c.readPreamble {
		c.readPreamble = true
		c.preambleErr = c.recvPreamble()
	}
	if c.preambleErr != nil {
		return 0, c.preambleErr
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.UnixConn.Read(p)
}

// recvPreamble reads until it can tell whether the connection starts with
// a preamble, collecting any descriptors that arrive on the way.
func (c *fdConn) recvPreamble() error {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*maxPassedFiles))
	var got []byte
	var files []*os.File
	for len(got) < preambleLen && bytes.HasPrefix([]byte(preambleMagic), got[:min(len(got), len(preambleMagic))]) {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		fs, ferr := parseRights(oob[:oobn])
		files = append(files, fs...)
		if err == nil && ferr != nil {
			err = ferr
		}
		if err == nil && flags&unix.MSG_CTRUNC != 0 {
			err = fmt.Errorf("more than %d file descriptors passed", maxPassedFiles)
		}
		got = append(got, buf[:n]...)
		if n == 0 && (err == nil || errors.Is(err, io.EOF)) {
			closeFiles(files)
			if len(got) == 0 {
				return io.EOF // connected and hung up, like a liveness probe
			}
			return errors.New("read preamble: connection closed during preamble")
		}
		if err != nil {
			closeFiles(files)
			return fmt.Errorf("read preamble: %w", err)
		}
	}
	if !bytes.HasPrefix(got, []byte(preambleMagic)) {
		// Not ours: an ordinary HTTP client. Descriptors nobody asked for
		// are dropped.
		closeFiles(files)
		c.pending = got
		return nil
	}
	if want := int(got[len(preambleMagic)]); want != len(files) {
		closeFiles(files)
		return fmt.Errorf("read preamble: announced %d file descriptors, received %d", want, len(files))
	}
	c.pending = got[preambleLen:]
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		closeFiles(files)
		return net.ErrClosed
	}
	c.files = files
	return nil
}

// parseRights returns the descriptors carried in SCM_RIGHTS messages.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			// Not SCM_RIGHTS (e.g. credentials): nothing to close.
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "passed-fd"))
		}
	}
	return files, nil
}

// takeFiles hands the connection's descriptors to the caller, who then owns
// them; later calls return nil.
func (c *fdConn) takeFiles() []*os.File {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.files
	c.files = nil
	return f
}

// Close closes the connection and any descriptors no handler took.
func (c *fdConn) Close() error {
	c.mu.Lock()
	c.closed = true
	files := c.files
	c.files = nil
	c.mu.Unlock()
	closeFiles(files)
	return c.UnixConn.Close()
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// connKey is the context key under which ConnContext stores the *fdConn.
type connKey struct{}

// withConn is the http.Server ConnContext hook: it lets handlers reach the
// connection's passed descriptors.
func withConn(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*fdConn); ok {
		return context.WithValue(ctx, connKey{}, fc)
	}
	return ctx
}

// passedFiles returns the descriptors passed on the request's connection,
// transferring their ownership to the caller. By the time a handler runs
// the request has been read, so the preamble has been too.
func passedFiles(ctx context.Context) []*os.File {
	fc, ok := ctx.Value(connKey{}).(*fdConn)
	if !ok {
		return nil
	}
	return fc.takeFiles()
}

// sendPreamble writes the descriptor-passing preamble carrying files on c.
func sendPreamble(c *net.UnixConn, files []*os.File) error {
	if len(files) > maxPassedFiles {
		return fmt.Errorf("send preamble: %d file descriptors, at most %d", len(files), maxPassedFiles)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	msg := append([]byte(preambleMagic), byte(len(fds)))
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(msg, oob, nil)
	// The descriptors must stay open until sendmsg has given the kernel its
	// own references; the caller keeps owning files afterwards.
	runtime.KeepAlive(files)
	if err != nil {
		return fmt.Errorf("send preamble: %w", err)
	}
	if n != len(msg) || oobn != len(oob) {
		return fmt.Errorf("send preamble: short write (%d of %d bytes)", n, len(msg))
	}
	return nil
}
