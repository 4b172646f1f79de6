package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Direct published ports. A sandbox whose agent can make sockets inside
// its network namespace (sandbox.(*Sandbox).DirectSockets) gets its
// published TCP connections without the gateway: the inner connection is
// one of those sockets, bound to the source address the gateway would have
// used (the client's own, or the gateway's) and connected to the sandbox's
// address, which is local to it, so the two kernel sockets are spliced
// and no byte passes through netstack or the TAP. The service inside sees
// the same source address either way (sandbox/direct.go says how the
// replies find their way back).
//
// Sockets are asked for in batches ahead of need, so a connection never
// waits for the agent: when the pool is empty, or a socket cannot be
// bound, the connection goes through the gateway as before.

// SocketSource returns up to n (at most 32) unbound IPv4 TCP sockets made
// inside a sandbox's network namespace with IP_TRANSPARENT and the mark
// that routes the replies back (sandbox.(*Sandbox).DirectSockets). The
// caller owns them.
type SocketSource func(ctx context.Context, n int) ([]*os.File, error)

const (
	directBatch    = 32               // sockets asked for at once
	directLowWater = 32               // ask for more at or below this many
	directTimeout  = 5 * time.Second  // bounds one request to the agent
	directRetry    = 30 * time.Second // wait after a failed request
)

// directPool keeps a few sockets from one sandbox for connections to one
// of its addresses. Its methods are safe for concurrent use.
type directPool struct {
	src    SocketSource
	addr   netip.Addr
	logger *slog.Logger
	ctx    context.Context // cancelled by close; bounds fills
	cancel context.CancelFunc
	wg     sync.WaitGroup // the fill in flight

	// mu guards the fields below it.
	mu      sync.Mutex
	free    []*os.File
	filling bool
	retryAt time.Time // no fill before this, after a failed one
	warned  bool      // a failure has been logged at Warn
	closed  bool
}

func newDirectPool(addr netip.Addr, src SocketSource, logger *slog.Logger) *directPool {
	p := &directPool{src: src, addr: addr, logger: logger}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// take returns a socket, or nil when none is ready, and starts a fill when
// the pool runs low.
func (p *directPool) take() *os.File {
	p.mu.Lock()
	defer p.mu.Unlock()
	var f *os.File
	if n := len(p.free); n > 0 {
		f, p.free = p.free[n-1], p.free[:n-1]
	}
	p.fillLocked()
	return f
}

// warm starts a fill if the pool is low, so the first connection finds a
// socket.
func (p *directPool) warm() {
	p.mu.Lock()
	p.fillLocked()
	p.mu.Unlock()
}

func (p *directPool) fillLocked() {
	if p.closed || p.filling || len(p.free) > directLowWater || time.Now().Before(p.retryAt) {
		return
	}
	p.filling = true
	p.wg.Add(1)
	go p.fill()
}

// fill asks the sandbox for a batch of sockets.
func (p *directPool) fill() {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.ctx, directTimeout)
	files, err := p.src(ctx, directBatch)
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.filling = false
	if p.closed {
		closeAll(files)
		return
	}
	if err != nil {
		p.retryAt = time.Now().Add(directRetry)
		level := slog.LevelDebug
		if !p.warned {
			level, p.warned = slog.LevelWarn, true
		}
		p.logger.Log(context.Background(), level, "nat: published ports to this address go through the gateway", "addr", p.addr, "err", err)
		return
	}
	p.free = append(p.free, files...)
}

// close closes the pool's sockets and waits for a fill in flight.
func (p *directPool) close() {
	p.mu.Lock()
	p.closed = true
	free := p.free
	p.free = nil
	p.mu.Unlock()
	p.cancel()
	closeAll(free)
	p.wg.Wait()
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// errNoSource marks a direct socket that could not take the source
// address, or find a free port for it: the caller falls back to the
// gateway, which may still manage.
var errNoSource = errors.New("direct socket cannot take the source address")

// dialDirect binds f to src (port 0: connect picks one) and connects it
// to dst, returning it as a *directConn, which owns f; f is closed on
// failure. dst is the sandbox's own address, so connect runs the whole
// handshake over the sandbox's loopback before it returns, and a refusal
// is known at once; a handshake still under way (the service's kernel
// busy elsewhere) finishes while the relay waits to read.
//
// holdAck is for a client that has already sent bytes: the socket keeps
// the handshake's last ACK back until it can carry the first of them
// (TCP_DEFER_ACCEPT on a connecting socket; Linux's
// tcp_rcv_synsent_state_process), and the service's kernel queues the
// connection for accept only when that segment arrives. The service then
// wakes once for the connection and its request instead of twice: a fifth
// of its context switches at a few thousand connections a second. A
// client that has sent nothing (a protocol where the server speaks first)
// must not get it, or the service would not see the connection until the
// delayed-ACK timer, up to 200 ms later.
func dialDirect(f *os.File, src, dst netip.AddrPort, holdAck bool) (net.Conn, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %w", errNoSource, err)
	}
	var bindErr, connErr error
	if err := rc.Control(func(fd uintptr) {
		s := int(fd)
		if err := unix.Bind(s, &unix.SockaddrInet4{Addr: src.Addr().As4(), Port: int(src.Port())}); err != nil {
			bindErr = err
			return
		}
		if holdAck {
			// Best effort: without it the service wakes once more.
			unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 1)
		}
		connErr = unix.Connect(s, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		if connErr == unix.EINPROGRESS {
			connErr = nil
			if v, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
				connErr = err
			} else if v != 0 {
				connErr = unix.Errno(v)
			}
		}
	}); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %w", errNoSource, err)
	}
	switch {
	case bindErr != nil:
		f.Close()
		return nil, fmt.Errorf("%w to %s: %w", errNoSource, src, bindErr)
	case errors.Is(connErr, unix.EADDRNOTAVAIL), errors.Is(connErr, unix.EADDRINUSE):
		// No port left for this source and destination, or the 4-tuple
		// is still in TIME_WAIT from an earlier client with the same
		// address and port.
		f.Close()
		return nil, fmt.Errorf("%w: connect %s from %s: %w", errNoSource, dst, src, connErr)
	case connErr != nil:
		f.Close()
		return nil, fmt.Errorf("connect %s from %s: %w", dst, src, connErr)
	}
	return &directConn{f: f, rc: rc, remote: net.TCPAddrFromAddrPort(dst)}, nil
}

// hasPending reports whether bytes the peer sent wait to be read on c, a
// *net.TCPConn (SIOCINQ); false when it cannot tell.
func hasPending(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int32
	var errno unix.Errno
	if rc.Control(func(fd uintptr) {
		_, _, errno = unix.RawSyscall(unix.SYS_IOCTL, fd, unix.SIOCINQ, uintptr(unsafe.Pointer(&n)))
	}) != nil {
		return false
	}
	return errno == 0 && n > 0
}
