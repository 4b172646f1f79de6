package stack

// Guests' TCP and UDP flows, to any address, arrive at gVisor's forwarders
// (the NIC is promiscuous) unless a socket of the gateway's own is bound
// to the destination (ListenTCP/ListenUDP, e.g. DNS on port 53). The
// forwarders hand them to the TCPHandler and UDPHandler, which decide
// where they go (nat dials a host socket).

import (
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TCPHandler receives guests' TCP connection attempts.
type TCPHandler interface {
	// HandleTCP is called on a goroutine of its own for each SYN. It must
	// call Accept or Reject before it returns (the usual order: dial the
	// real destination, Reject if that fails, else Accept and relay); if
	// it calls neither, the attempt is refused. Once it has answered it
	// may return and leave the relay to another goroutine.
	//
	// A Translated request (Config.TranslateTCP) is different: HandleTCP
	// is called on the gateway's receive path and must not block. It
	// answers with Translate or Reject, later and from any goroutine;
	// a request never answered leaves the guest retrying its SYN.
	HandleTCP(r *TCPRequest)
}

// TCPConn is a guest TCP connection: a net.Conn that can half-close.
type TCPConn interface {
	net.Conn
	// CloseWrite sends FIN; reads continue until the guest closes.
	CloseWrite() error
}

// TCPRequest is a guest's attempt to open a TCP connection. Src is the
// guest's end, Dst the address it connected to.
type TCPRequest struct {
	Src, Dst netip.AddrPort

	mu  sync.Mutex
	req *tcp.ForwarderRequest // nil once answered
	// tx is the translator's flow when the SYN came to it
	// (tcptranslate.go); done records that it was answered.
	tx   *txFlow
	done bool
}

// Accept completes the handshake with the guest and returns the
// connection, with TCP keepalive on so dead guests are noticed. The caller
// owns the connection. It implements io.WriterTo, which copies straight
// from netstack into a host *net.TCPConn (tcpconn.go).
// It fails if the request was already answered or the guest gave up, and
// for a Translated request, which has no netstack connection.
func (r *TCPRequest) Accept() (TCPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tx != nil {
		return nil, errTranslated
	}
	if r.req == nil {
		return nil, convertError("accept "+r.flow(), &tcpip.ErrInvalidEndpointState{})
	}
	req := r.req
	r.req = nil
	var wq waiter.Queue
	ep, err := req.CreateEndpoint(&wq)
	if err != nil {
		// The handshake failed; a RST tells the guest if it still listens.
		req.Complete(true)
		return nil, convertError("accept "+r.flow(), err)
	}
	req.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	return newTCPConn(&wq, ep), nil
}

// Reject refuses the connection with a RST: the guest sees "connection
// refused". Calling it after Accept or Reject does nothing.
func (r *TCPRequest) Reject() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tx != nil {
		if !r.done {
			r.done = true
			r.tx.abort()
		}
		return
	}
	if r.req != nil {
		r.req.Complete(true)
		r.req = nil
	}
}

// forwardTCP runs on gVisor's goroutine for one SYN.
func (g *Gateway) forwardTCP(fr *tcp.ForwarderRequest) {
	id := fr.ID()
	r := &TCPRequest{
		Src: netip.AddrPortFrom(fromTCPIP(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(fromTCPIP(id.LocalAddress), id.LocalPort),
		req: fr,
	}
	defer r.Reject()
	if g.cfg.TCP != nil {
		g.cfg.TCP.HandleTCP(r)
	}
}

// UDPHandler receives guests' UDP flows.
type UDPHandler interface {
	// HandleUDP is called for the first datagram of each new flow (a
	// source and destination address and port pair without a socket). It
	// runs on the gateway's receive path, so it must return quickly:
	// Accept (and dialling a host UDP socket) is fine, relaying belongs
	// in a goroutine it starts. A request it does not Accept is dropped.
	HandleUDP(r *UDPRequest)
}

// UDPRequest is the first datagram of a new guest UDP flow. Src is the
// guest's end, Dst the address it sent to.
type UDPRequest struct {
	Src, Dst netip.AddrPort

	g   *Gateway
	req *udp.ForwarderRequest // nil once accepted
}

// Accept creates a socket for the flow, connected to Src and bound to Dst,
// and returns it (a *UDPConn); the first datagram is already queued on it. The caller
// owns the connection; closing it ends the flow (the next datagram starts
// a new request). Accept must be called from HandleUDP, at most once.
func (r *UDPRequest) Accept() (net.Conn, error) {
	if r.req == nil {
		return nil, convertError("accept "+r.flow(), &tcpip.ErrInvalidEndpointState{})
	}
	req := r.req
	r.req = nil
	var wq waiter.Queue
	ep, err := req.CreateEndpoint(&wq)
	if err != nil {
		return nil, convertError("accept "+r.flow(), err)
	}
	return newUDPConn(r.g, &wq, ep), nil
}

// forwardUDP runs on the receive path for a datagram without a socket.
func (g *Gateway) forwardUDP(fr *udp.ForwarderRequest) bool {
	if g.cfg.UDP == nil {
		return true // handled: dropped quietly, no ICMP port unreachable
	}
	id := fr.ID()
	r := &UDPRequest{
		Src: netip.AddrPortFrom(fromTCPIP(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(fromTCPIP(id.LocalAddress), id.LocalPort),
		g:   g,
		req: fr,
	}
	g.cfg.UDP.HandleUDP(r)
	return true
}

func (r *TCPRequest) flow() string { return "tcp " + r.Src.String() + "->" + r.Dst.String() }
func (r *UDPRequest) flow() string { return "udp " + r.Src.String() + "->" + r.Dst.String() }
