package nat

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Published ports, host to network:
//
//  1. Add opens a host listener (TCP) or socket (UDP) on [HostIP:]HostPort.
//  2. TCP: each accepted client gets a source address (guestSource: its
//     own address unless it is loopback or otherwise unusable inside the
//     network, then the gateway's), the Target is dialed through the
//     Dialer first, and only then are the two relayed with the same relay
//     as outbound NAT. A failed dial resets the client.
//  3. UDP: each client address is a flow in a flow table (flowtable.go)
//     with its own Dialer.DialUDP conn; the replies go back through the
//     listening socket to the client as they arrive, on the gateway's
//     receive path (sendReply: no goroutine per flow), and a janitor
//     expires idle flows.
//  4. Remove closes the listener and every connection and flow it
//     carried, and waits for their goroutines.

// ErrPortInUse is wrapped by the error Add returns when the host port is
// taken, by another mapping or by another program.
var ErrPortInUse = errors.New("already in use")

// Published-port limits.
const (
	forwardDialTimeout  = 10 * time.Second
	forwardMaxInFlight  = 256 // TCP dials into the network in flight per mapping
	forwardMaxPerClient = 64  // ... and per client address
	forwardMaxUDPFlows  = 1024
)

// Mapping is one published port: the host listens on HostIP:HostPort and
// forwards into the network to Target.
type Mapping struct {
	// Proto is "tcp" or "udp".
	Proto string
	// HostIP is the host address to listen on; the zero Addr listens on
	// every address (IPv4 and IPv6), 0.0.0.0 on every IPv4 address.
	HostIP netip.Addr
	// HostPort is the host port; 0 in Add picks a free one.
	HostPort uint16
	// Target is the address inside the network to forward to.
	Target netip.AddrPort
}

// hostAddr is the listening address as users write it, 0.0.0.0:5000 for
// the zero HostIP.
func (m Mapping) hostAddr() string {
	ip := m.HostIP
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	return netip.AddrPortFrom(ip, m.HostPort).String()
}

// String formats m as "0.0.0.0:5000/tcp -> 172.17.0.2:80".
func (m Mapping) String() string {
	return fmt.Sprintf("%s/%s -> %s", m.hostAddr(), m.Proto, m.Target)
}

// Dialer opens connections inside the network with a chosen source
// address; the zero source address stands for the gateway's own address
// and a zero source port for an ephemeral one. *stack.Gateway implements
// it. Conns from DialTCP should implement CloseWrite so half-closes pass
// through.
type Dialer interface {
	DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error)
	DialUDP(src, dst netip.AddrPort) (net.Conn, error)
}

// guestSource picks the source address a published-port client carries
// into the network: its own address and port, so services inside see who
// connected (as slirp4netns does), except where that address cannot work
// inside the network -- loopback and unspecified clients, an address of
// the other family than the target, the gateway's or the target's own
// address, or one inside the network's subnet (replies would go to a
// neighbour, not back through the gateway) -- where the zero AddrPort
// (the gateway, ephemeral port) is used. subnet may be the zero Prefix.
func guestSource(client, target netip.AddrPort, gateway netip.Addr, subnet netip.Prefix) netip.AddrPort {
	a := client.Addr().Unmap()
	t := target.Addr().Unmap()
	switch {
	case !a.IsValid(), a.IsLoopback(), a.IsUnspecified(), a.IsMulticast(),
		a.Is4() != t.Is4(), a == t, a == gateway.Unmap(), subnet.Contains(a), client.Port() == 0:
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, client.Port())
}

// prefixer is implemented by *stack.Gateway: the network's prefix, which
// client addresses must not fall into to be kept.
type prefixer interface {
	Prefix() netip.Prefix
}

// Forwards holds one network's published ports. Its methods are safe for
// concurrent use; Close it when the network goes away.
type Forwards struct {
	dialer  Dialer
	gateway netip.Addr
	subnet  netip.Prefix // zero if the Dialer does not tell
	logger  *slog.Logger
	limited *logLimiter
	clock   func() time.Time

	// mu guards the fields below it. Lock order: Forwards.mu, then
	// published.mu.
	mu     sync.Mutex
	closed bool
	ports  map[portKey]*published
	direct map[netip.Addr]*directPool // direct.go
}

type portKey struct {
	proto string
	ip    netip.Addr
	port  uint16
}

// NewForwards returns an empty set of published ports that dial into the
// network through d; gateway is the network's gateway address (the source
// loopback clients appear from). If d has a Prefix method (as
// *stack.Gateway does), clients inside that prefix also appear as the
// gateway. A nil logger discards.
func NewForwards(d Dialer, gateway netip.Addr, logger *slog.Logger) *Forwards {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var subnet netip.Prefix
	if p, ok := d.(prefixer); ok {
		subnet = p.Prefix()
	}
	return &Forwards{
		dialer:  d,
		gateway: gateway.Unmap(),
		subnet:  subnet,
		logger:  logger,
		limited: newLogLimiter(logger, time.Now),
		clock:   time.Now,
		ports:   make(map[portKey]*published),
		direct:  make(map[netip.Addr]*directPool),
	}
}

// Direct makes published TCP connections to addr, an IPv4 address of a
// sandbox on the network, use sockets from src spliced to the client's
// (direct.go) instead of the gateway, for as long as the sandbox has it;
// remove undoes that and closes the sockets kept. A second Direct for the
// same addr replaces the first.
func (f *Forwards) Direct(addr netip.Addr, src SocketSource) (remove func()) {
	addr = addr.Unmap()
	pool := newDirectPool(addr, src, f.logger)
	f.mu.Lock()
	old := f.direct[addr]
	f.direct[addr] = pool
	warm := false
	for _, p := range f.ports {
		warm = warm || (p.m.Proto == "tcp" && p.m.Target.Addr() == addr)
	}
	f.mu.Unlock()
	if old != nil {
		old.close()
	}
	if warm {
		pool.warm()
	}
	return func() {
		f.mu.Lock()
		if f.direct[addr] == pool {
			delete(f.direct, addr)
		}
		f.mu.Unlock()
		pool.close()
	}
}

// dialTCP opens the connection into the network for a published port:
// directly when the target's sandbox gave sockets for it, through the
// gateway otherwise or when a socket cannot take the source address. A
// dial through the gateway is bounded by forwardDialTimeout within ctx; a
// direct one cannot wait (dialDirect), and holds its handshake's last ACK
// when client has sent bytes already (dialDirect's holdAck).
func (f *Forwards) dialTCP(ctx context.Context, src, dst netip.AddrPort, client net.Conn) (net.Conn, error) {
	f.mu.Lock()
	pool := f.direct[dst.Addr()]
	f.mu.Unlock()
	if pool != nil && dst.Addr().Is4() {
		if s := pool.take(); s != nil {
			from := src
			if !from.IsValid() {
				from = netip.AddrPortFrom(f.gateway, 0)
			}
			c, err := dialDirect(s, from, dst, hasPending(client))
			if !errors.Is(err, errNoSource) {
				return c, err
			}
			f.limited.warn("nat: direct published connection falls back to the gateway", "dst", dst, "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
	defer cancel()
	return f.dialer.DialTCP(ctx, src, dst)
}

// Add publishes m and returns it as published (with the chosen HostPort
// when m.HostPort was 0). A host port already taken fails with an error
// naming it and wrapping ErrPortInUse.
func (f *Forwards) Add(m Mapping) (Mapping, error) {
	if m.Proto != "tcp" && m.Proto != "udp" {
		return Mapping{}, fmt.Errorf("publish %s: protocol %q is not tcp or udp", m.hostAddr(), m.Proto)
	}
	if !m.Target.IsValid() || m.Target.Port() == 0 {
		return Mapping{}, fmt.Errorf("publish %s/%s: target %s needs an address and a port", m.hostAddr(), m.Proto, m.Target)
	}
	m.Target = netip.AddrPortFrom(m.Target.Addr().Unmap(), m.Target.Port())
	m.HostIP = m.HostIP.Unmap()
	if m.HostIP.Zone() != "" {
		return Mapping{}, fmt.Errorf("publish %s/%s: host address with a zone is not supported", m.hostAddr(), m.Proto)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return Mapping{}, fmt.Errorf("publish %s/%s: forwards closed", m.hostAddr(), m.Proto)
	}
	if m.HostPort != 0 {
		if _, ok := f.ports[keyOf(m)]; ok {
			return Mapping{}, fmt.Errorf("host port %s/%s is %w", m.hostAddr(), m.Proto, ErrPortInUse)
		}
	}
	p, err := f.listen(m)
	if err != nil {
		return Mapping{}, err
	}
	f.ports[keyOf(p.m)] = p
	if pool := f.direct[p.m.Target.Addr()]; pool != nil && p.m.Proto == "tcp" {
		pool.warm() // lock order: Forwards.mu, then directPool.mu
	}
	p.start()
	f.logger.Info("nat: published port", "mapping", p.m.String())
	return p.m, nil
}

func keyOf(m Mapping) portKey { return portKey{m.Proto, m.HostIP, m.HostPort} }

// Remove unpublishes the mapping with m's Proto, HostIP and HostPort
// (Target is not compared): the listener is closed, then every connection
// and flow it carried, and Remove waits for them to end.
func (f *Forwards) Remove(m Mapping) error {
	m.HostIP = m.HostIP.Unmap()
	f.mu.Lock()
	p, ok := f.ports[keyOf(m)]
	delete(f.ports, keyOf(m))
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("host port %s/%s is not published", m.hostAddr(), m.Proto)
	}
	p.close()
	f.logger.Info("nat: unpublished port", "mapping", p.m.String())
	return nil
}

// List returns the published mappings ordered by protocol, host port and
// host address.
func (f *Forwards) List() []Mapping {
	f.mu.Lock()
	out := make([]Mapping, 0, len(f.ports))
	for _, p := range f.ports {
		out = append(out, p.m)
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b Mapping) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.HostPort, b.HostPort), a.HostIP.Compare(b.HostIP))
	})
	return out
}

// Close removes every mapping and direct source; Add fails afterwards.
func (f *Forwards) Close() {
	f.mu.Lock()
	f.closed = true
	ports := make([]*published, 0, len(f.ports))
	for k, p := range f.ports {
		ports = append(ports, p)
		delete(f.ports, k)
	}
	pools := make([]*directPool, 0, len(f.direct))
	for a, pool := range f.direct {
		pools = append(pools, pool)
		delete(f.direct, a)
	}
	f.mu.Unlock()
	for _, p := range ports {
		p.close()
	}
	for _, pool := range pools {
		pool.close()
	}
}

// listen opens m's host socket and returns the mapping's runtime with
// HostPort filled in.
func (f *Forwards) listen(m Mapping) (*published, error) {
	network := m.Proto
	switch {
	case m.HostIP.Is4():
		network += "4"
	case m.HostIP.Is6():
		network += "6"
	}
	addr := net.JoinHostPort("", fmt.Sprint(m.HostPort))
	if m.HostIP.IsValid() {
		addr = netip.AddrPortFrom(m.HostIP, m.HostPort).String()
	}
	// Accepted clients get hostKeepAlive by inheriting it from the
	// listening socket (the kernel copies it into each), rather than
	// through four setsockopts on every accept.
	lc := net.ListenConfig{KeepAlive: -1}
	if m.Proto == "tcp" {
		lc.Control = keepAliveListener
	}
	p := &published{f: f, m: m, conns: make(map[net.Conn]struct{}), inflight: newInFlight(forwardMaxInFlight, forwardMaxPerClient)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	var local net.Addr
	if m.Proto == "tcp" {
		ln, err := lc.Listen(p.ctx, network, addr)
		if err != nil {
			p.cancel()
			return nil, listenError(m, err)
		}
		p.ln, local = ln, ln.Addr()
	} else {
		pc, err := lc.ListenPacket(p.ctx, network, addr)
		if err != nil {
			p.cancel()
			return nil, listenError(m, err)
		}
		p.pc, local = pc.(*net.UDPConn), pc.LocalAddr()
		if p.rx, err = newHostPacketConn(p.pc); err != nil {
			p.pc.Close()
			p.cancel()
			return nil, fmt.Errorf("publish %s/%s: %w", m.hostAddr(), m.Proto, err)
		}
		p.flows = newFlowTable[*forwardFlow](forwardMaxUDPFlows)
	}
	switch a := local.(type) {
	case *net.TCPAddr:
		p.m.HostPort = uint16(a.Port)
	case *net.UDPAddr:
		p.m.HostPort = uint16(a.Port)
	}
	return p, nil
}

// keepAliveListener is a ListenConfig.Control that turns hostKeepAlive
// on for a listening TCP socket, and so for every socket it accepts.
func keepAliveListener(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range []struct{ level, opt, v int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(hostKeepAlive.Idle / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(hostKeepAlive.Interval / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, hostKeepAlive.Count},
		} {
			if err := unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); err != nil {
				serr = os.NewSyscallError("setsockopt", err)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// listenError turns a listen failure into the error Add reports.
func listenError(m Mapping, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("host port %s/%s is %w", m.hostAddr(), m.Proto, ErrPortInUse)
	}
	return fmt.Errorf("publish %s/%s: %w", m.hostAddr(), m.Proto, err)
}

// published is one mapping's runtime.
type published struct {
	f  *Forwards
	m  Mapping
	ln net.Listener // tcp
	pc *net.UDPConn // udp
	// rx is pc, read and written with raw syscalls (hostPacketConn).
	rx *hostPacketConn

	ctx      context.Context // cancelled by close; bounds dials
	cancel   context.CancelFunc
	inflight *inFlight
	wg       sync.WaitGroup

	// mu guards the fields below it.
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}    // tcp: both sides of every relay
	flows  *flowTable[*forwardFlow] // udp
}

// forwardFlow is one published-UDP client's conn into the network.
type forwardFlow struct {
	key    flowKey
	client netip.AddrPort // as the listening socket reported it, for replies
	conn   net.Conn
	send   *rawOp // the replies' sendto state (hostPacketConn.WriteTo)
}

// start starts the listener's goroutines.
func (p *published) start() {
	if p.ln != nil {
		p.wg.Add(1)
		go p.serveTCP()
		return
	}
	p.wg.Add(2)
	go p.serveUDP()
	go p.janitor()
}

// close stops the mapping and waits for its goroutines.
func (p *published) close() {
	p.mu.Lock()
	p.closed = true
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	var flows []*forwardFlow
	if p.flows != nil {
		flows = p.flows.removeAll()
	}
	p.mu.Unlock()
	p.cancel()
	if p.ln != nil {
		p.ln.Close()
	}
	if p.pc != nil {
		p.pc.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	for _, fl := range flows {
		fl.conn.Close()
	}
	p.wg.Wait()
}

// track registers conns for close and reports false once p is closed.
func (p *published) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *published) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

// serveTCP accepts clients until the listener is closed.
func (p *published) serveTCP() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if isClosed(err) {
				return
			}
			// Out of descriptors and the like: back off briefly rather
			// than spin, and stop at once if the mapping goes away.
			p.f.limited.warn("nat: published port accept failed", "mapping", p.m.String(), "err", err)
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		p.wg.Add(1)
		workers.goFn(func() { p.forwardTCP(c) })
	}
}

// forwardTCP carries one client connection into the network.
func (p *published) forwardTCP(c net.Conn) {
	defer p.wg.Done()
	if !p.track(c) {
		c.Close()
		return
	}
	defer p.untrack(c)
	client := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	if !p.inflight.acquire(client.Addr()) {
		p.f.limited.warn("nat: published port dials over cap, resetting client", "mapping", p.m.String(), "client", client)
		reset(c)
		return
	}
	g, err := p.f.dialTCP(p.ctx, guestSource(client, p.m.Target, p.f.gateway, p.f.subnet), p.m.Target, c)
	p.inflight.release(client.Addr())
	if err != nil {
		p.f.limited.warn("nat: published port dial failed", "mapping", p.m.String(), "client", client, "err", err)
		reset(c)
		return
	}
	if !p.track(g) {
		g.Close()
		c.Close()
		return
	}
	defer p.untrack(g)
	relay(g, c)
}

// reset closes c with a RST, so the client sees the failure instead of a
// connection that was accepted and then ended cleanly.
func reset(c net.Conn) {
	if l, ok := c.(lingerer); ok {
		l.SetLinger(0)
	}
	c.Close()
}

// serveUDP reads client datagrams until the socket is closed.
func (p *published) serveUDP() {
	defer p.wg.Done()
	buf := make([]byte, udpMaxDatagram)
	for {
		n, client, err := p.rx.ReadFrom(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			continue
		}
		fl := p.udpFlow(client)
		if fl == nil {
			continue
		}
		if _, err := fl.conn.Write(buf[:n]); err != nil && !isClosed(err) {
			p.f.limited.warn("nat: published udp send failed", "mapping", p.m.String(), "client", client, "err", err)
		}
	}
}

// udpFlow returns client's flow, creating it if needed; nil means the
// datagram is dropped.
func (p *published) udpFlow(client netip.AddrPort) *forwardFlow {
	key := flowKey{Src: netip.AddrPortFrom(client.Addr().Unmap(), client.Port()), Dst: p.m.Target}
	now := p.f.clock()
	p.mu.Lock()
	fl, ok := p.flows.get(key)
	if ok {
		p.flows.sent(key, now)
	}
	p.mu.Unlock()
	if ok {
		return fl
	}
	conn, err := p.f.dialer.DialUDP(guestSource(client, p.m.Target, p.f.gateway, p.f.subnet), p.m.Target)
	if err != nil {
		p.f.limited.warn("nat: published udp dial failed", "mapping", p.m.String(), "client", client, "err", err)
		return nil
	}
	fl = &forwardFlow{key: key, client: client, conn: conn, send: p.rx.newSendOp()}
	notifier, inline := conn.(datagramNotifier)
	var dropped *forwardFlow
	p.mu.Lock()
	err = errClosed
	if !p.closed {
		dropped, err = p.flows.add(key, fl, now)
	}
	if err == nil && !inline {
		p.wg.Add(1)
	}
	p.mu.Unlock()
	if dropped != nil {
		dropped.conn.Close() // room made for fl (flowtable.go)
	}
	if err != nil {
		conn.Close()
		if errors.Is(err, errTableFull) {
			p.f.limited.warn("nat: published udp flows over cap, dropping", "mapping", p.m.String(), "client", client)
		}
		return nil
	}
	if inline {
		// Closing the conn ends the calls.
		notifier.OnDatagram(func(b []byte) { p.sendReply(fl, b) })
	} else {
		go p.udpReplies(fl)
	}
	return fl
}

// sendReply sends a datagram from inside the network to fl's client
// without waiting: one the listening socket has no room for is dropped,
// as a full socket buffer would.
func (p *published) sendReply(fl *forwardFlow, b []byte) {
	p.mu.Lock()
	p.flows.received(fl.key, p.f.clock())
	p.mu.Unlock()
	if _, err := p.rx.WriteToNow(fl.send, b, fl.client); err != nil && !isClosed(err) && !errors.Is(err, errWouldBlock) {
		p.f.limited.warn("nat: published udp reply failed", "mapping", p.m.String(), "client", fl.client, "err", err)
	}
}

// udpReplies carries datagrams from inside the network back to the
// client until the flow's conn is closed, for a conn that cannot say when
// one arrives (sendReply's fallback).
func (p *published) udpReplies(fl *forwardFlow) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		if cur, ok := p.flows.get(fl.key); ok && cur == fl {
			p.flows.remove(fl.key)
		}
		p.mu.Unlock()
		fl.conn.Close()
	}()
	for {
		buf, n, err := readDatagram(fl.conn)
		if err != nil {
			if icmpReported(err) {
				continue
			}
			return
		}
		p.mu.Lock()
		p.flows.received(fl.key, p.f.clock())
		p.mu.Unlock()
		_, err = p.rx.WriteTo(fl.send, (*buf)[:n], fl.client)
		udpBufs.Put(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			p.f.limited.warn("nat: published udp reply failed", "mapping", p.m.String(), "client", fl.client, "err", err)
		}
	}
}

// janitor expires idle UDP flows until the mapping is closed.
func (p *published) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.expire()
	}
}

// expire closes the UDP flows idle past their timeout at the current
// clock time.
func (p *published) expire() {
	p.mu.Lock()
	expired := p.flows.expire(p.f.clock())
	p.mu.Unlock()
	for _, fl := range expired {
		fl.conn.Close()
	}
}
