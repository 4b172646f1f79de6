package stack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDPConn is a UDP socket of the gateway's (a guest flow's, or one dialed
// into the network): a gonet.UDPConn that can also wait for a datagram
// without reading it. A copy loop that waits first and takes a buffer only
// for the datagram holds none while the flow is quiet, where one blocked
// in Read holds a buffer for the largest datagram (64 KiB) the whole time.
type UDPConn struct {
	*gonet.UDPConn
	wq *waiter.Queue
	ep tcpip.Endpoint
}

func newUDPConn(wq *waiter.Queue, ep tcpip.Endpoint) *UDPConn {
	return &UDPConn{UDPConn: gonet.NewUDPConn(wq, ep), wq: wq, ep: ep}
}

// waitEvents are the events after which a Read does not block: a datagram,
// a pending error, or the socket closed.
const waitEvents = waiter.ReadableEvents | waiter.EventErr | waiter.EventHUp

// WaitRead blocks until a Read would not: a datagram is queued, an error
// is pending, or the conn is closed (Read then fails). It ignores
// deadlines.
func (c *UDPConn) WaitRead() {
	if c.ep.Readiness(waitEvents) != 0 {
		return
	}
	e, ch := waiter.NewChannelEntry(waitEvents)
	c.wq.EventRegister(&e)
	defer c.wq.EventUnregister(&e)
	for c.ep.Readiness(waitEvents) == 0 {
		<-ch
	}
}
