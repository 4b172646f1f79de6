package stack

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDPConn is a UDP socket of the gateway's (a guest flow's, or one dialed
// into the network): a gonet.UDPConn that can also hand each datagram to
// a function as it arrives, on the gateway's receive path. A NAT that
// sends each datagram on from there needs no goroutine per flow waiting
// in Read, nor a buffer for the largest datagram (64 KiB) held while it
// waits; and such a conn's IPv4 datagrams skip netstack (udpshortcut.go).
type UDPConn struct {
	*gonet.UDPConn
	g  *Gateway
	wq *waiter.Queue
	ep tcpip.Endpoint

	// sc is set while the conn's datagrams may skip netstack.
	sc atomic.Pointer[shortcut]

	// mu makes fn's calls one at a time, so datagrams keep their order,
	// and orders OnDatagram against Close.
	mu     sync.Mutex
	fn     func(p []byte)
	closed bool
}

func newUDPConn(g *Gateway, wq *waiter.Queue, ep tcpip.Endpoint) *UDPConn {
	return &UDPConn{UDPConn: gonet.NewUDPConn(wq, ep), g: g, wq: wq, ep: ep}
}

// datagramEvents are the events that make OnDatagram look for datagrams:
// a datagram, a pending error, the socket closed.
const datagramEvents = waiter.ReadableEvents | waiter.EventErr | waiter.EventHUp

// udpBufs lends OnDatagram's reads a buffer for the largest datagram, only
// while it reads. It holds *[]byte, so that Put does not allocate.
var udpBufs = sync.Pool{New: func() any { b := make([]byte, 1<<16); return &b }}

// OnDatagram calls fn with each datagram queued on c and each that
// arrives later, one call at a time and in order, until c is closed. fn
// runs on the gateway's receive path, so it must not block (send on
// without waiting) nor call c's Close; p is valid only during the call.
// Call it once, instead of reading c.
func (c *UDPConn) OnDatagram(fn func(p []byte)) {
	c.mu.Lock()
	c.fn = fn
	c.mu.Unlock()
	e := waiter.NewFunctionEntry(datagramEvents, func(waiter.EventMask) { c.drain() })
	c.wq.EventRegister(&e)
	c.drain()
	c.startShortcut()
}

// drain hands fn the datagrams netstack queued on c. It also runs inside
// Close, under the endpoint's lock, where ReadNow fails at once.
func (c *UDPConn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := udpBufs.Get().(*[]byte)
	defer udpBufs.Put(buf)
	for !c.closed {
		n, ok, err := c.ReadNow(*buf)
		if !ok || err != nil {
			return
		}
		c.fn((*buf)[:n])
	}
}

// deliver hands fn a datagram that skipped netstack.
func (c *UDPConn) deliver(p []byte) {
	c.mu.Lock()
	if !c.closed {
		c.fn(p)
	}
	c.mu.Unlock()
}

// startShortcut lets c's IPv4 datagrams skip netstack from now on; an
// IPv6 conn, or one of a gateway without a switch port, stays on it.
func (c *UDPConn) startShortcut() {
	if c.g.ep == nil {
		return
	}
	la, lerr := c.ep.GetLocalAddress()
	ra, rerr := c.ep.GetRemoteAddress()
	if lerr != nil || rerr != nil {
		return
	}
	local := netip.AddrPortFrom(fromTCPIP(la.Addr), la.Port)
	remote := netip.AddrPortFrom(fromTCPIP(ra.Addr), ra.Port)
	if !local.Addr().Is4() || !remote.Addr().Is4() {
		return
	}
	s := shortcutFor(local, remote)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed && c.g.udp.add(s.key, c) {
		c.sc.Store(s)
	}
}

// Write sends p to c's peer, past netstack when it can.
func (c *UDPConn) Write(p []byte) (int, error) {
	if s := c.sc.Load(); s != nil && c.g.sendUDP(s, p) {
		return len(p), nil
	}
	return c.UDPConn.Write(p)
}

// Close closes the socket; datagrams for its flow go to netstack again.
func (c *UDPConn) Close() error {
	c.mu.Lock()
	c.closed = true
	s := c.sc.Swap(nil)
	c.mu.Unlock()
	if s != nil {
		c.g.udp.remove(s.key, c)
	}
	return c.UDPConn.Close()
}

// ReadNow reads a queued datagram into p without waiting: ok is false
// when none is queued, and err is set when c is closed or failed.
func (c *UDPConn) ReadNow(p []byte) (n int, ok bool, err error) {
	w := tcpip.SliceWriter(p)
	res, terr := c.ep.Read(&w, tcpip.ReadOptions{})
	switch terr.(type) {
	case nil:
		return res.Count, true, nil
	case *tcpip.ErrWouldBlock:
		return 0, false, nil
	case *tcpip.ErrClosedForReceive:
		return 0, false, net.ErrClosed
	default:
		// Not c.LocalAddr() for the message: ReadNow may run inside Close
		// (OnDatagram), which holds the endpoint's lock that it takes.
		return 0, false, convertError("read udp", terr)
	}
}

// WriteNow sends p to c's peer without waiting for room: when the
// endpoint's send buffer is full it fails at once with an error that is
// syscall.EAGAIN, and the caller may drop p, as a full socket buffer
// would. For callers that must not park, such as one goroutine serving
// many flows.
func (c *UDPConn) WriteNow(p []byte) (int, error) {
	if s := c.sc.Load(); s != nil && c.g.sendUDP(s, p) {
		return len(p), nil
	}
	var r bytes.Reader
	r.Reset(p)
	n, terr := c.ep.Write(&r, tcpip.WriteOptions{})
	if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
		return 0, syscall.EAGAIN
	}
	return int(n), convertError("write udp", terr)
}
