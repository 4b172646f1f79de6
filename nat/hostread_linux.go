package nat

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hostReader reads a host TCP socket with raw read(2)s. The socket is
// non-blocking and Go's netpoller does the waiting, so the read never
// blocks; net.Conn.Read would still go through entersyscall, which wakes
// sysmon whenever the daemon was idle just before (stack/rawio_linux.go
// has the whole story). Deadlines and Close behave as for net.Conn.Read.
type hostReader struct {
	rc syscall.RawConn
	fn func(fd uintptr) bool // r.ready, bound once

	// The state of one Read, for ready.
	p   []byte
	n   int
	err error
}

func newHostReader(c *net.TCPConn) (*hostReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("host socket: %w", err)
	}
	r := &hostReader{rc: rc}
	r.fn = r.ready
	return r, nil
}

// Read reads at least one byte into p, or reports io.EOF once the peer has
// closed its side.
func (r *hostReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p = p
	err := r.rc.Read(r.fn)
	n, rerr := r.n, r.err
	r.p, r.n, r.err = nil, 0, nil
	switch {
	case err != nil: // closed, or past the read deadline
		return 0, err
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// ready is the poller callback: it reports false only to wait for data.
func (r *hostReader) ready(fd uintptr) bool {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch errno {
		case 0:
			r.n = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.err = errno
			return true
		}
	}
}
