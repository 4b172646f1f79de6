package nat

import (
	"io"
	"net"

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
// or resets it (see the TCP path in outbound.go). The work runs on a
// reused goroutine (workers.go) and HandleTCP returns once the connection
// is accepted or refused, as stack.TCPHandler asks: gVisor starts a fresh
// goroutine for every SYN, and the host dial and the handshake's first
// send grew its stack several times over, 4-5% of the daemon's CPU at a
// few thousand connections a second.
//
// A translated request arrives on the gateway's receive path, which must
// not wait for a dial: HandleTCP returns at once and the worker answers.
func (o *Outbound) HandleTCP(r *stack.TCPRequest) {
	if r.Translated() {
		a := &tcpRequestAdapter{r: r}
		workers.goFn(func() {
			defer r.Reject() // the backstop; a no-op once answered
			o.handleTCP(r.Src, r.Dst, a)
		})
		return
	}
	a := &tcpRequestAdapter{r: r, done: make(chan struct{})}
	workers.goFn(func() {
		defer a.answered() // handleTCP always answers; this is the backstop
		o.handleTCP(r.Src, r.Dst, a)
	})
	<-a.done
}

// tcpRequestAdapter narrows Accept's result to the interface handleTCP
// uses, and tells HandleTCP when the request has been answered. Only the
// goroutine running handleTCP uses it.
type tcpRequestAdapter struct {
	r    *stack.TCPRequest
	done chan struct{} // closed once Accept or Reject has run
	sent bool          // done is closed
}

func (a *tcpRequestAdapter) Accept() (guestConn, error) {
	defer a.answered()
	c, err := a.r.Accept()
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (a *tcpRequestAdapter) Translated() bool { return a.r.Translated() }

func (a *tcpRequestAdapter) Translate(host *net.TCPConn, onDone func()) (io.Closer, error) {
	defer a.answered()
	return a.r.Translate(host, onDone)
}

func (a *tcpRequestAdapter) Reject() {
	a.r.Reject()
	a.answered()
}

func (a *tcpRequestAdapter) answered() {
	if a.done != nil && !a.sent {
		a.sent = true
		close(a.done)
	}
}

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
