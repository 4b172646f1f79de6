package stack

import (
	"bytes"
	"net"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDPConn is a UDP socket of the gateway's (a guest flow's, or one dialed
// into the network): a gonet.UDPConn that can also call a function as
// each datagram arrives, on the gateway's receive path. A NAT that sends
// each datagram on from there needs no goroutine per flow waiting in Read,
// nor a buffer for the largest datagram (64 KiB) held while it waits.
type UDPConn struct {
	*gonet.UDPConn
	wq *waiter.Queue
	ep tcpip.Endpoint
}

func newUDPConn(wq *waiter.Queue, ep tcpip.Endpoint) *UDPConn {
	return &UDPConn{UDPConn: gonet.NewUDPConn(wq, ep), wq: wq, ep: ep}
}

// datagramEvents are the events OnDatagram's fn runs for: a datagram, a
// pending error, the socket closed.
const datagramEvents = waiter.ReadableEvents | waiter.EventErr | waiter.EventHUp

// OnDatagram calls fn each time a datagram for c arrives, and when c
// closes, for as long as c lives. fn runs on the gateway's receive path,
// so it must not block: read with ReadNow, send without waiting.
// Datagrams queued before OnDatagram do not call it; read them first (or
// after). fn also runs inside c.Close, under the endpoint's lock: it must
// call no method of c but ReadNow.
func (c *UDPConn) OnDatagram(fn func()) {
	e := waiter.NewFunctionEntry(datagramEvents, func(waiter.EventMask) { fn() })
	c.wq.EventRegister(&e)
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
	var r bytes.Reader
	r.Reset(p)
	n, terr := c.ep.Write(&r, tcpip.WriteOptions{})
	if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
		return 0, syscall.EAGAIN
	}
	return int(n), convertError("write udp", terr)
}
