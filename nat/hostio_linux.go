package nat

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hostIO reads and writes a host socket (TCP, or connected UDP) with raw
// read(2) and write(2). The socket is non-blocking and Go's netpoller does
// the waiting, so neither call blocks; net.Conn's Read and Write would
// still go through entersyscall, which wakes sysmon whenever the daemon
// was idle just before (stack/rawio_linux.go has the whole story).
// Deadlines and Close behave as for net.Conn. A hostIO serves one reader
// and one writer at a time, like the relay's and the UDP flow's loops.
type hostIO struct {
	rc syscall.RawConn
	// stream is false for a datagram socket, where a read of 0 bytes is
	// an empty datagram rather than the end of the stream.
	stream bool
	rd, wr rawOp
}

// rawOp is the state of one Read or Write, for its poller callback.
type rawOp struct {
	trap uintptr // unix.SYS_READ or unix.SYS_WRITE
	fn   func(fd uintptr) bool
	p    []byte
	n    int
	err  error
}

// newHostIO wraps c, a *net.TCPConn or a connected *net.UDPConn.
func newHostIO(c syscall.Conn, stream bool) (*hostIO, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("host socket: %w", err)
	}
	h := &hostIO{rc: rc, stream: stream}
	h.rd.trap, h.wr.trap = unix.SYS_READ, unix.SYS_WRITE
	h.rd.fn, h.wr.fn = h.rd.ready, h.wr.ready
	return h, nil
}

// Read reads into p; on a stream socket it reports io.EOF once the peer
// has closed its side.
func (h *hostIO) Read(p []byte) (int, error) {
	if len(p) == 0 && h.stream {
		return 0, nil
	}
	n, err := h.rd.do(p, h.rc.Read)
	if err == nil && n == 0 && h.stream {
		return 0, io.EOF
	}
	return n, err
}

// Write writes p, waiting for room as long as the socket's write deadline
// allows.
func (h *hostIO) Write(p []byte) (int, error) {
	done := 0
	for {
		n, err := h.wr.do(p[done:], h.rc.Write)
		done += n
		if err != nil || done == len(p) || !h.stream {
			return done, err
		}
	}
}

func (op *rawOp) do(p []byte, wait func(func(uintptr) bool) error) (int, error) {
	op.p = p
	err := wait(op.fn)
	n, oerr := op.n, op.err
	op.p, op.n, op.err = nil, 0, nil
	switch {
	case err != nil: // closed, or past the deadline
		return 0, err
	case oerr != nil:
		name := "read"
		if op.trap == unix.SYS_WRITE {
			name = "write"
		}
		return 0, os.NewSyscallError(name, oerr)
	}
	return n, nil
}

// ready is the poller callback: it reports false only to wait for the
// socket to become ready.
func (op *rawOp) ready(fd uintptr) bool {
	var ptr unsafe.Pointer
	if len(op.p) > 0 {
		ptr = unsafe.Pointer(&op.p[0])
	}
	for {
		n, _, errno := unix.RawSyscall(op.trap, fd, uintptr(ptr), uintptr(len(op.p)))
		switch errno {
		case 0:
			op.n = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			op.err = errno
			return true
		}
	}
}
