package nat

import (
	"github.com/usernet/usernet/stack"
)

// The gateway's handler interfaces, implemented by Outbound; Forwards
// dials through the gateway.
var (
	_ stack.TCPHandler  = (*Outbound)(nil)
	_ stack.UDPHandler  = (*Outbound)(nil)
	_ stack.EchoHandler = (*Outbound)(nil)
	_ Dialer            = (*stack.Gateway)(nil)
	_ prefixer          = (*stack.Gateway)(nil)
)

// HandleTCP relays a guest's TCP connection to Dst through a host socket,
// or resets it (see the TCP path in outbound.go). It blocks for the life
// of the connection; the gateway calls it on a goroutine of its own.
func (o *Outbound) HandleTCP(r *stack.TCPRequest) {
	o.handleTCP(r.Src, r.Dst, tcpRequestAdapter{r})
}

// tcpRequestAdapter narrows Accept's result to the interface handleTCP
// uses.
type tcpRequestAdapter struct{ r *stack.TCPRequest }

func (a tcpRequestAdapter) Accept() (guestConn, error) {
	c, err := a.r.Accept()
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (a tcpRequestAdapter) Reject() { a.r.Reject() }

// HandleUDP starts a UDP flow for the first datagram of a new 4-tuple (see
// udp.go); it returns once the flow's goroutines are started or the
// datagram is dropped.
func (o *Outbound) HandleUDP(r *stack.UDPRequest) {
	o.handleUDP(r.Src, r.Dst, r)
}

// HandleEcho sends a guest's echo request from the host if the host allows
// an ICMP socket (see echo.go); the reply, if one comes, is injected with
// the guest's identifier. It does not block on the reply.
func (o *Outbound) HandleEcho(e *stack.Echo) {
	o.handleEcho(echoRequest{Src: e.Src, Dst: e.Dst, ID: e.ID, Seq: e.Seq, Payload: e.Payload, reply: e.Reply})
}
