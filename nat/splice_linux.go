package nat

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A direct published connection (direct.go) is two kernel sockets, the
// client's and one inside the sandbox, and the relay splices between them
// through a pipe: splice(2) moves page references, so the bytes are never
// copied into our memory. This is net.TCPConn.ReadFrom's trick, done here
// for two reasons it cannot serve:
//
//   - The inner socket stays the *os.File it arrived as (a directConn).
//     Making it a *net.TCPConn (net.FileConn) cost a dup, four keepalive
//     setsockopts and a second close per connection, 11% of the daemon's
//     CPU at a few thousand connections a second.
//   - The splices are raw syscalls with the poller doing the waiting
//     (rawOp, hostio_linux.go), like every other non-blocking fd on the
//     data path; syscall.Splice would wake sysmon after every idle moment.

// directConn is a connected direct socket as a net.Conn. The relay splices
// it; Read and Write exist for completeness and go through the file.
type directConn struct {
	f      *os.File
	rc     syscall.RawConn
	remote *net.TCPAddr
}

// SyscallConn returns the socket's raw conn, for splicing.
func (c *directConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

func (c *directConn) Read(p []byte) (int, error)         { return c.f.Read(p) }
func (c *directConn) Write(p []byte) (int, error)        { return c.f.Write(p) }
func (c *directConn) Close() error                       { return c.f.Close() }
func (c *directConn) RemoteAddr() net.Addr               { return c.remote }
func (c *directConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *directConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *directConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// LocalAddr asks the socket: the port may be one connect chose.
func (c *directConn) LocalAddr() net.Addr {
	a := &net.TCPAddr{}
	c.rc.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			if in4, ok := sa.(*unix.SockaddrInet4); ok {
				a = &net.TCPAddr{IP: net.IP(in4.Addr[:]), Port: in4.Port}
			}
		}
	})
	return a
}

// CloseWrite sends FIN (shutdown(SHUT_WR)).
func (c *directConn) CloseWrite() error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return err
	}
	return serr
}

// SetLinger sets SO_LINGER as net.TCPConn.SetLinger does; 0 makes Close
// reset the connection.
func (c *directConn) SetLinger(sec int) error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: int32(sec)})
	}); err != nil {
		return err
	}
	return serr
}

// pipeSize is what a splice pipe asks for: big enough that one splice
// moves a large read's worth (1 MiB is also the most an unprivileged
// process may ask for by default). A smaller pipe still works.
const pipeSize = 1 << 20

// maxIdlePipes bounds the pipes kept for reuse.
const maxIdlePipes = 64

// pipePair is a pipe's read and write ends.
type pipePair struct{ r, w int }

// pipes keeps empty pipes for reuse: making one is three syscalls.
var pipes struct {
	mu   sync.Mutex
	idle []pipePair
}

func getPipe() (pipePair, error) {
	pipes.mu.Lock()
	if n := len(pipes.idle); n > 0 {
		p := pipes.idle[n-1]
		pipes.idle = pipes.idle[:n-1]
		pipes.mu.Unlock()
		return p, nil
	}
	pipes.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return pipePair{}, os.NewSyscallError("pipe2", err)
	}
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize) // best effort
	return pipePair{fds[0], fds[1]}, nil
}

// putPipe keeps p for reuse if it is empty (clean) and there is room;
// otherwise closes it.
func putPipe(p pipePair, clean bool) {
	if clean {
		pipes.mu.Lock()
		if len(pipes.idle) < maxIdlePipes {
			pipes.idle = append(pipes.idle, p)
			pipes.mu.Unlock()
			return
		}
		pipes.mu.Unlock()
	}
	unix.Close(p.r)
	unix.Close(p.w)
}

// spliceCopy moves src's bytes to dst through a pipe until src reports
// EOF (nil error) or something fails. Both are stream sockets.
func spliceCopy(dst, src syscall.Conn) (int64, error) {
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	p, err := getPipe()
	if err != nil {
		return 0, err
	}
	var total int64
	inPipe := 0
	defer func() { putPipe(p, inPipe == 0) }()
	drain := &rawOp{trap: unix.SYS_SPLICE, pipe: p.w, max: pipeSize}
	pump := &rawOp{trap: unix.SYS_SPLICE, pipe: p.r, outPipe: true}
	drain.fn, pump.fn = drain.ready, pump.ready
	for {
		n, err := drain.do(nil, srcRC.Read)
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil // EOF
		}
		inPipe = n
		for inPipe > 0 {
			pump.max = inPipe
			n, err := pump.do(nil, dstRC.Write)
			if err != nil {
				return total, err
			}
			if n == 0 {
				return total, io.ErrShortWrite // cannot happen with bytes in the pipe
			}
			inPipe -= n
			total += int64(n)
		}
	}
}
