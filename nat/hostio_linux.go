package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
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

// rawOp is the state of one read, write, recvfrom, sendto or splice, for
// its poller callback.
type rawOp struct {
	trap uintptr // unix.SYS_READ, SYS_WRITE, SYS_RECVFROM, SYS_SENDTO or SYS_SPLICE
	fn   func(fd uintptr) bool
	p    []byte
	n    int
	err  error

	// The peer's address, for recvfrom (filled in) and sendto (read).
	sa    unix.RawSockaddrAny
	salen uint32

	// For splice (splice_linux.go): the pipe end across from the poller's
	// fd, whether the bytes flow out of the pipe (into the poller's fd)
	// rather than into it, and how many to move at most.
	pipe    int
	outPipe bool
	max     int

	// For a read into a borrowed buffer (readPooled): when pool is set,
	// each attempt takes held from it and an attempt that finds nothing
	// gives it back, so a read waiting for data holds no buffer.
	pool *sync.Pool
	held *[]byte

	// For an attempt that must not wait (doNow): now calls fn and keeps
	// its answer in nowDone, made once so that doNow does not allocate.
	now     func(fd uintptr)
	nowDone bool
}

// errWouldBlock is doNow's answer when the socket is not ready.
var errWouldBlock = errors.New("socket not ready")

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

// readPooled reads one datagram into a buffer from pool (*[]byte), taken
// only once the datagram is there: a flow waiting for its next datagram
// holds no buffer. On success the caller gives the buffer back to pool.
// With wait false it does not wait for one: errWouldBlock when none is
// queued.
func (h *hostIO) readPooled(pool *sync.Pool, wait bool) (*[]byte, int, error) {
	h.rd.pool = pool
	var n int
	var err error
	if wait {
		n, err = h.rd.do(nil, h.rc.Read)
	} else {
		n, err = h.rd.doNow(nil, h.rc.Control)
	}
	b := h.rd.held
	h.rd.pool, h.rd.held = nil, nil
	if err != nil && b != nil {
		pool.Put(b)
		b = nil
	}
	return b, n, err
}

// writeNow sends p without waiting for room: errWouldBlock when there is
// none. For datagram sockets.
func (h *hostIO) writeNow(p []byte) (int, error) {
	return h.wr.doNow(p, h.rc.Control)
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
		return 0, os.NewSyscallError(syscallNames[op.trap], oerr)
	}
	return n, nil
}

// doNow is do without the wait, for callers that must not park (the
// gateway's receive path): one attempt through control (a RawConn's
// Control), errWouldBlock when the socket is not ready.
func (op *rawOp) doNow(p []byte, control func(func(uintptr)) error) (int, error) {
	if op.now == nil {
		op.now = func(fd uintptr) { op.nowDone = op.fn(fd) }
	}
	op.p = p
	err := control(op.now)
	n, oerr, done := op.n, op.err, op.nowDone
	op.p, op.n, op.err, op.nowDone = nil, 0, nil, false
	switch {
	case err != nil:
		return 0, err
	case !done:
		return 0, errWouldBlock
	case oerr != nil:
		return 0, os.NewSyscallError(syscallNames[op.trap], oerr)
	}
	return n, nil
}

var syscallNames = map[uintptr]string{
	unix.SYS_READ:     "read",
	unix.SYS_WRITE:    "write",
	unix.SYS_RECVFROM: "recvfrom",
	unix.SYS_SENDTO:   "sendto",
	unix.SYS_SPLICE:   "splice",
}

// ready is the poller callback: it reports false only to wait for the
// socket to become ready.
func (op *rawOp) ready(fd uintptr) bool {
	if op.pool != nil && op.held == nil {
		op.held = op.pool.Get().(*[]byte)
		op.p = *op.held
	}
	var ptr unsafe.Pointer
	if len(op.p) > 0 {
		ptr = unsafe.Pointer(&op.p[0])
	}
	for {
		var n uintptr
		var errno unix.Errno
		switch op.trap {
		case unix.SYS_RECVFROM:
			op.salen = unix.SizeofSockaddrAny
			n, _, errno = unix.RawSyscall6(op.trap, fd, uintptr(ptr), uintptr(len(op.p)), 0,
				uintptr(unsafe.Pointer(&op.sa)), uintptr(unsafe.Pointer(&op.salen)))
		case unix.SYS_SENDTO:
			n, _, errno = unix.RawSyscall6(op.trap, fd, uintptr(ptr), uintptr(len(op.p)), 0,
				uintptr(unsafe.Pointer(&op.sa)), uintptr(op.salen))
		case unix.SYS_SPLICE:
			in, out := fd, uintptr(op.pipe)
			if op.outPipe {
				in, out = out, in
			}
			n, _, errno = unix.RawSyscall6(op.trap, in, 0, out, 0, uintptr(op.max), unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		default:
			n, _, errno = unix.RawSyscall(op.trap, fd, uintptr(ptr), uintptr(len(op.p)))
		}
		switch errno {
		case 0:
			op.n = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			if op.pool != nil {
				op.pool.Put(op.held)
				op.held, op.p = nil, nil
			}
			return false
		default:
			op.err = errno
			return true
		}
	}
}

// hostPacketConn is a host UDP socket shared by many peers (a published
// UDP port's listener), read with raw recvfrom(2) by one goroutine and
// written with raw sendto(2) by many, each through a rawOp of its own
// (newSendOp). See hostIO for why raw.
type hostPacketConn struct {
	rc syscall.RawConn
	v6 bool // AF_INET6: addresses go out as sockaddr_in6, IPv4 ones mapped
	rd rawOp
}

func newHostPacketConn(c *net.UDPConn) (*hostPacketConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("host socket: %w", err)
	}
	h := &hostPacketConn{rc: rc}
	var sa unix.Sockaddr
	if cerr := rc.Control(func(fd uintptr) { sa, err = unix.Getsockname(int(fd)) }); cerr != nil {
		return nil, fmt.Errorf("host socket: %w", cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("host socket: getsockname: %w", err)
	}
	_, h.v6 = sa.(*unix.SockaddrInet6)
	h.rd.trap, h.rd.fn = unix.SYS_RECVFROM, h.rd.ready
	return h, nil
}

// ReadFrom reads one datagram into p and reports who sent it, as
// net.UDPConn.ReadFromUDPAddrPort does (IPv4 peers of an IPv6 socket come
// as mapped addresses).
func (h *hostPacketConn) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	if len(p) == 0 {
		return 0, netip.AddrPort{}, errors.New("recvfrom: empty buffer")
	}
	n, err := h.rd.do(p, h.rc.Read)
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	return n, decodeSockaddr(&h.rd.sa), nil
}

// newSendOp returns the state for one writer's WriteTo calls.
func (h *hostPacketConn) newSendOp() *rawOp {
	op := &rawOp{trap: unix.SYS_SENDTO}
	op.fn = op.ready
	return op
}

// WriteTo sends p to the peer to, using op (from newSendOp), which must
// not be used by another goroutine at the same time.
func (h *hostPacketConn) WriteTo(op *rawOp, p []byte, to netip.AddrPort) (int, error) {
	if !h.v6 && !to.Addr().Unmap().Is4() {
		return 0, os.NewSyscallError("sendto", unix.EAFNOSUPPORT)
	}
	op.salen = encodeSockaddr(&op.sa, to, h.v6)
	return op.do(p, h.rc.Write)
}

// WriteToNow is WriteTo without waiting for room: errWouldBlock when there
// is none.
func (h *hostPacketConn) WriteToNow(op *rawOp, p []byte, to netip.AddrPort) (int, error) {
	if !h.v6 && !to.Addr().Unmap().Is4() {
		return 0, os.NewSyscallError("sendto", unix.EAFNOSUPPORT)
	}
	op.salen = encodeSockaddr(&op.sa, to, h.v6)
	return op.doNow(p, h.rc.Control)
}

// decodeSockaddr reads an AF_INET or AF_INET6 address; anything else is
// the zero AddrPort.
func decodeSockaddr(sa *unix.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(in.Addr), networkPort(in.Port))
	case unix.AF_INET6:
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		addr := netip.AddrFrom16(in.Addr)
		if in.Scope_id != 0 {
			// A link-local peer: keep its interface, by index, for the
			// reply (encodeSockaddr reads it back).
			addr = addr.WithZone(strconv.FormatUint(uint64(in.Scope_id), 10))
		}
		return netip.AddrPortFrom(addr, networkPort(in.Port))
	}
	return netip.AddrPort{}
}

// encodeSockaddr writes to into sa as the socket's family expects (an
// IPv4 socket takes only IPv4 addresses) and returns its length.
func encodeSockaddr(sa *unix.RawSockaddrAny, to netip.AddrPort, v6 bool) uint32 {
	*sa = unix.RawSockaddrAny{}
	if !v6 {
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		in.Family = unix.AF_INET
		in.Addr = to.Addr().Unmap().As4()
		in.Port = networkPort(to.Port())
		return unix.SizeofSockaddrInet4
	}
	in := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
	in.Family = unix.AF_INET6
	in.Addr = to.Addr().As16()
	in.Port = networkPort(to.Port())
	if id, err := strconv.ParseUint(to.Addr().Zone(), 10, 32); err == nil {
		in.Scope_id = uint32(id)
	}
	return unix.SizeofSockaddrInet6
}

// networkPort converts a port between host and network byte order (the
// same swap both ways), as sockaddr's Port field holds it.
func networkPort(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return *(*uint16)(unsafe.Pointer(&b[0]))
}
