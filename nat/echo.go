package nat

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ICMP echo forwarding. A guest's ping to an outside address is sent from
// the host for real and only a real reply is passed back; nothing is
// faked. The host decides what is possible, probed once at construction:
//
//   - EchoPingSocket: socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), allowed
//     when net.ipv4.ping_group_range contains the daemon's gid. The kernel
//     replaces the echo identifier with the socket's own, so each guest
//     ping session (guest address, guest identifier) gets its own socket
//     and a reply is matched by (socket, peer, sequence).
//   - EchoRaw: one shared SOCK_RAW socket (CAP_NET_RAW). It sees every ICMP
//     echo reply on the host, so each guest session is given its own wire
//     identifier and a reply is matched by (wire identifier, peer,
//     sequence).
//   - EchoGatewayOnly: requests to other hosts are dropped; the gateway
//     answers pings to its own address itself.
//
// In every mode the guest gets its reply with its own identifier and
// sequence (Echo.Reply answers with the request's), and the payload the
// peer sent back.

// Echo modes reported by Outbound.EchoMode.
const (
	EchoPingSocket  = "ping-socket"
	EchoRaw         = "raw"
	EchoGatewayOnly = "gateway-only"
)

const (
	echoPendingTimeout = 30 * time.Second // a request unanswered this long is forgotten
	echoSessionIdle    = 60 * time.Second // a session's socket or identifier is released after this
	echoMaxSessions    = 1024
	echoMaxPending     = 4096
	icmpFilter         = 1 // ICMP_FILTER from linux/icmp.h, level SOL_RAW
	icmpEchoReply      = 0
	icmpEchoRequest    = 8
)

// probeEchoMode finds the best echo mode the host allows and returns it
// with the function that opens a socket for it (nil for gateway-only).
func probeEchoMode() (string, func() (net.PacketConn, error)) {
	for _, m := range []struct {
		mode string
		typ  int
	}{{EchoPingSocket, unix.SOCK_DGRAM}, {EchoRaw, unix.SOCK_RAW}} {
		c, err := openEchoSocket(m.typ)
		if err != nil {
			continue
		}
		c.Close()
		typ := m.typ
		return m.mode, func() (net.PacketConn, error) { return openEchoSocket(typ) }
	}
	return EchoGatewayOnly, nil
}

// openEchoSocket opens an IPv4 ICMP socket of type typ (SOCK_DGRAM: a ping
// socket; SOCK_RAW: a raw socket that receives only echo replies) as a
// net.PacketConn, so reads can be interrupted by Close.
func openEchoSocket(typ int) (net.PacketConn, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("icmp socket: %w", err)
	}
	if typ == unix.SOCK_RAW {
		// A raw socket gets a copy of every ICMP message the host
		// receives; let the kernel drop all but echo replies.
		if err := unix.SetsockoptInt(fd, unix.SOL_RAW, icmpFilter, ^(1 << icmpEchoReply)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("icmp filter: %w", err)
		}
	}
	f := os.NewFile(uintptr(fd), "icmp")
	c, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("icmp socket: %w", err)
	}
	return c, nil
}

// echoRequest is a guest's echo request: the parts of *stack.Echo the echo
// path uses, with reply standing for Echo.Reply.
type echoRequest struct {
	Src, Dst netip.Addr
	ID, Seq  uint16
	Payload  []byte
	reply    func(payload []byte)
}

// echoSession is a guest's ping session, identified as the guest sees it.
type echoSession struct {
	src netip.Addr
	id  uint16
}

// echoSocket is a session's sending state.
type echoSocket struct {
	session echoSession
	conn    net.PacketConn // ping: the session's own socket; raw: the shared one
	wireID  uint16         // raw: the identifier sent on the wire
	last    time.Time
}

type pendingKey struct {
	session echoSession
	peer    netip.Addr
	seq     uint16
}

type pendingEcho struct {
	reply func([]byte)
	at    time.Time
}

// echoForwarder sends guests' echo requests from the host and routes the
// replies back. Safe for concurrent use.
type echoForwarder struct {
	mode  string
	open  func() (net.PacketConn, error)
	clock func() time.Time
	o     *Outbound // counters and rate-limited logging

	wg sync.WaitGroup // reader goroutines

	// mu guards the fields below it.
	mu       sync.Mutex
	closed   bool
	raw      net.PacketConn // raw mode: opened on first use
	nextID   uint16
	sessions map[echoSession]*echoSocket
	wire     map[uint16]*echoSocket // raw mode: wire identifier -> session
	pending  map[pendingKey]pendingEcho
}

func newEchoForwarder(mode string, open func() (net.PacketConn, error), clock func() time.Time, o *Outbound) *echoForwarder {
	return &echoForwarder{
		mode:     mode,
		open:     open,
		clock:    clock,
		o:        o,
		nextID:   uint16(rand.Uint32()),
		sessions: make(map[echoSession]*echoSocket),
		wire:     make(map[uint16]*echoSocket),
		pending:  make(map[pendingKey]pendingEcho),
	}
}

// forward sends r to r.Dst from the host. It returns an error when the
// request could not be sent; the caller counts and logs it.
func (e *echoForwarder) forward(r echoRequest) error {
	if e.mode == EchoGatewayOnly {
		return fmt.Errorf("echo: no ICMP socket allowed on this host")
	}
	now := e.clock()
	sess := echoSession{src: r.Src, id: r.ID}
	e.mu.Lock()
	s, err := e.sessionLocked(sess, now)
	if err == nil && len(e.pending) >= echoMaxPending {
		err = fmt.Errorf("echo: %d requests pending", len(e.pending))
	}
	if err != nil {
		e.mu.Unlock()
		return err
	}
	s.last = now
	e.pending[pendingKey{session: sess, peer: r.Dst, seq: r.Seq}] = pendingEcho{reply: r.reply, at: now}
	conn, wireID := s.conn, s.wireID
	e.mu.Unlock()

	msg := marshalEcho(icmpEchoRequest, wireID, r.Seq, r.Payload)
	var to net.Addr = &net.IPAddr{IP: r.Dst.AsSlice()}
	if e.mode == EchoPingSocket {
		to = &net.UDPAddr{IP: r.Dst.AsSlice()}
	}
	if _, err := conn.WriteTo(msg, to); err != nil {
		e.mu.Lock()
		delete(e.pending, pendingKey{session: sess, peer: r.Dst, seq: r.Seq})
		e.mu.Unlock()
		return fmt.Errorf("echo send: %w", err)
	}
	return nil
}

// sessionLocked returns sess's socket state, creating it (and, for ping
// sockets or the first raw use, a socket and its reader) if needed.
func (e *echoForwarder) sessionLocked(sess echoSession, now time.Time) (*echoSocket, error) {
	if e.closed {
		return nil, errClosed
	}
	if s, ok := e.sessions[sess]; ok {
		return s, nil
	}
	if len(e.sessions) >= echoMaxSessions {
		return nil, fmt.Errorf("echo: %d ping sessions open", len(e.sessions))
	}
	s := &echoSocket{session: sess, last: now}
	switch e.mode {
	case EchoPingSocket:
		c, err := e.open()
		if err != nil {
			return nil, err
		}
		s.conn = c
		e.wg.Add(1)
		go e.read(c, s)
	case EchoRaw:
		if e.raw == nil {
			c, err := e.open()
			if err != nil {
				return nil, err
			}
			e.raw = c
			e.wg.Add(1)
			go e.read(c, nil)
		}
		s.conn = e.raw
		for {
			e.nextID++
			if _, used := e.wire[e.nextID]; !used {
				break
			}
		}
		s.wireID = e.nextID
		e.wire[s.wireID] = s
	}
	e.sessions[sess] = s
	return s, nil
}

// read receives echo replies on c until it is closed. own is the session
// owning c (ping sockets); nil means the shared raw socket, where the
// session is found by the wire identifier.
func (e *echoForwarder) read(c net.PacketConn, own *echoSocket) {
	defer e.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			continue
		}
		typ, id, seq, payload, ok := parseEcho(buf[:n])
		if !ok || typ != icmpEchoReply {
			continue
		}
		peer := addrOf(from)
		e.mu.Lock()
		s := own
		if s == nil {
			s = e.wire[id]
		}
		var p pendingEcho
		found := false
		if s != nil {
			k := pendingKey{session: s.session, peer: peer, seq: seq}
			p, found = e.pending[k]
			delete(e.pending, k)
		}
		e.mu.Unlock()
		if !found {
			continue
		}
		e.o.echoReplies.Add(1)
		p.reply(append([]byte(nil), payload...))
	}
}

// addrOf returns the IP of a UDPAddr or IPAddr as a netip.Addr.
func addrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.IPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

// expire forgets unanswered requests and releases idle sessions.
func (e *echoForwarder) expire(now time.Time) {
	var closing []net.PacketConn
	e.mu.Lock()
	for k, p := range e.pending {
		if now.Sub(p.at) >= echoPendingTimeout {
			delete(e.pending, k)
		}
	}
	for k, s := range e.sessions {
		if now.Sub(s.last) < echoSessionIdle {
			continue
		}
		delete(e.sessions, k)
		if e.mode == EchoRaw {
			delete(e.wire, s.wireID)
		} else {
			closing = append(closing, s.conn)
		}
	}
	e.mu.Unlock()
	for _, c := range closing {
		c.Close()
	}
}

// close closes every socket and waits for the readers.
func (e *echoForwarder) close() {
	var closing []net.PacketConn
	e.mu.Lock()
	e.closed = true
	if e.raw != nil {
		closing = append(closing, e.raw)
	}
	for _, s := range e.sessions {
		if e.mode == EchoPingSocket {
			closing = append(closing, s.conn)
		}
	}
	clear(e.sessions)
	clear(e.wire)
	clear(e.pending)
	e.mu.Unlock()
	for _, c := range closing {
		c.Close()
	}
	e.wg.Wait()
}

// marshalEcho builds an ICMPv4 echo message with its checksum (a ping
// socket would compute it, a raw socket does not).
func marshalEcho(typ uint8, id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	binary.BigEndian.PutUint16(b[2:], icmpChecksum(b))
	return b
}

// parseEcho decodes an ICMPv4 echo request or reply (type, identifier,
// sequence and payload, which aliases b). It reports false for anything
// shorter than the header or with a nonzero code or another type.
func parseEcho(b []byte) (typ uint8, id, seq uint16, payload []byte, ok bool) {
	if len(b) < 8 || b[1] != 0 || (b[0] != icmpEchoReply && b[0] != icmpEchoRequest) {
		return 0, 0, 0, nil, false
	}
	return b[0], binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), b[8:], true
}

// icmpChecksum is the Internet checksum (RFC 1071) of b.
func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// handleEcho forwards a guest's echo request to an outside unicast IPv4
// address. Requests to the gateway never get here (netstack answers them);
// requests it may not forward are dropped and counted.
func (o *Outbound) handleEcho(r echoRequest) {
	dst := r.Dst.Unmap()
	if !dst.Is4() || dst == o.cfg.Gateway || !forwardable(dst) {
		o.echoDropped.Add(1)
		return
	}
	r.Dst = dst
	if err := o.echo.forward(r); err != nil {
		o.echoDropped.Add(1)
		if o.echo.mode != EchoGatewayOnly {
			o.dataError("nat: echo not forwarded", "src", r.Src, "dst", r.Dst, "err", err)
		}
		return
	}
	o.echoSent.Add(1)
}
