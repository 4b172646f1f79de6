package nat

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Outbound TCP path, one goroutine per SYN (the gateway runs HandleTCP on
// its own goroutine for each):
//
//  1. hostTarget maps the guest's destination to a host destination: the
//     gateway's own address becomes host loopback (or is refused), other
//     non-unicast destinations are refused.
//  2. A slot is taken in the in-flight caps (total and per guest source);
//     no slot: RST.
//  3. The host socket is dialed with a timeout; failure: RST, so the guest
//     sees "connection refused" instead of a connection that accepts and
//     then dies.
//  4. Only now is the guest's handshake completed (Accept), the slot is
//     released and the two connections are relayed (relay.go) until both
//     directions end.

// Default limits, used where Config leaves a field zero.
const (
	DefaultMaxInFlight          = 256
	DefaultMaxInFlightPerSource = 64
	DefaultMaxUDPFlows          = 4096
	DefaultDialTimeout          = 10 * time.Second
)

// hostKeepAlive probes idle host connections so that a relay to a peer
// that vanished is torn down within minutes; the guest side gets the
// gateway's keepalive.
var hostKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 60 * time.Second, Interval: 15 * time.Second, Count: 4}

// HostDialer opens host sockets ("tcp" or "udp" networks, address
// "ip:port"). *net.Dialer implements it; tests substitute their own to
// redirect destinations to loopback servers.
type HostDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures an Outbound. The zero value of every field but Gateway
// is usable.
type Config struct {
	// Gateway is the network's gateway address. Connections to it go to
	// the host's loopback address (same port) when HostLoopback is set,
	// like slirp4netns' 10.0.2.2, and are refused otherwise.
	Gateway      netip.Addr
	HostLoopback bool
	// Subnet is the network's prefix. Bypass keeps every destination in
	// it but the gateway on the network; invalid means no such check.
	Subnet netip.Prefix

	// Logger receives control messages and rate-limited data-path errors;
	// nil discards them.
	Logger *slog.Logger
	// Clock drives UDP flow expiry and log rate limiting; nil is time.Now.
	Clock func() time.Time

	// MaxInFlight and MaxInFlightPerSource cap TCP connection attempts
	// that are still dialing, in total and per guest source address; over
	// the cap a SYN is answered with RST. Zero means the Default values.
	MaxInFlight, MaxInFlightPerSource int
	// MaxUDPFlows caps live UDP flows; a datagram that would start one
	// more is dropped and counted. Zero means DefaultMaxUDPFlows.
	MaxUDPFlows int

	// Dialer opens host sockets; nil is a net.Dialer with DialTimeout and
	// TCP keepalive.
	Dialer HostDialer
	// DialTimeout bounds a host TCP dial; zero is DefaultDialTimeout.
	DialTimeout time.Duration
}

// Stats are an Outbound's counters since construction.
type Stats struct {
	TCPRelayed  uint64 // TCP connections accepted and relayed
	TCPRefused  uint64 // SYNs answered with RST: dial failed or destination not allowed
	TCPCapped   uint64 // SYNs answered with RST because an in-flight cap was reached
	UDPFlows    uint64 // UDP flows created
	UDPLive     uint64 // UDP flows alive now
	UDPDropped  uint64 // new UDP flows dropped: table full, destination not allowed or dial failed
	Bypassed    uint64 // sandbox connects allowed host sockets of their own (Bypass)
	EchoSent    uint64 // echo requests sent to the host network
	EchoReplies uint64 // echo replies delivered to the guest
	EchoDropped uint64 // echo requests not forwarded (no socket mode, destination, errors)
	Errors      uint64 // data-path errors (each also logged, rate-limited)
}

// Outbound forwards the traffic a network's guests send to the outside
// world through host sockets. It implements stack.TCPHandler,
// stack.UDPHandler and stack.EchoHandler; its methods are safe for
// concurrent use. Close it when the network goes away.
type Outbound struct {
	cfg     Config
	logger  *slog.Logger
	limited *logLimiter
	dialer  HostDialer
	// setKeepAlive: the dialer is the caller's, which may not enable
	// keepalives on what it dials (the default one does, at dial time).
	setKeepAlive bool
	inflight     *inFlight
	echo         *echoForwarder

	ctx    context.Context // cancelled by Close; bounds host dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // relays, UDP flow goroutines and reply poller, the janitor

	tcpRelayed, tcpRefused, tcpCapped  atomic.Uint64
	udpFlows, udpDropped               atomic.Uint64
	bypassed                           atomic.Uint64
	echoSent, echoReplies, echoDropped atomic.Uint64
	dataErrors                         atomic.Uint64

	// mu guards the fields below it. It is never held across I/O: the
	// data path takes it only to update the flow table, and Close
	// collects what to close under it and closes afterwards.
	mu     sync.Mutex
	closed bool
	live   map[io.Closer]struct{} // TCP connections being relayed
	udp    *flowTable[*udpFlow]
	// poller reads the UDP flows' replies (replies_linux.go); made on
	// the first flow. pollerErr is why it could not be.
	poller    *replyPoller
	pollerErr error
}

// NewOutbound returns an Outbound for one network. It probes which ICMP
// echo mode the host allows (EchoMode) and logs it, and starts the UDP
// flow janitor.
func NewOutbound(cfg Config) *Outbound {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlightPerSource <= 0 {
		cfg.MaxInFlightPerSource = DefaultMaxInFlightPerSource
	}
	if cfg.MaxUDPFlows <= 0 {
		cfg.MaxUDPFlows = DefaultMaxUDPFlows
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	custom := cfg.Dialer != nil
	if !custom {
		cfg.Dialer = &net.Dialer{Timeout: cfg.DialTimeout, KeepAliveConfig: hostKeepAlive}
	}
	cfg.Gateway = cfg.Gateway.Unmap()
	o := &Outbound{
		cfg:          cfg,
		logger:       cfg.Logger,
		limited:      newLogLimiter(cfg.Logger, cfg.Clock),
		dialer:       cfg.Dialer,
		setKeepAlive: custom,
		inflight:     newInFlight(cfg.MaxInFlight, cfg.MaxInFlightPerSource),
		live:         make(map[io.Closer]struct{}),
		udp:          newFlowTable[*udpFlow](cfg.MaxUDPFlows),
	}
	o.ctx, o.cancel = context.WithCancel(context.Background())
	mode, open := probeEchoMode()
	o.echo = newEchoForwarder(mode, open, cfg.Clock, o)
	o.logger.Info("nat: ICMP echo forwarding", "mode", mode)
	o.wg.Add(1)
	go o.janitor()
	return o
}

// EchoMode reports how ICMP echo requests to other hosts are forwarded:
// "ping-socket" (unprivileged ICMP datagram sockets, allowed by
// net.ipv4.ping_group_range), "raw" (CAP_NET_RAW) or "gateway-only" (they
// are dropped; only the gateway's own address answers pings).
func (o *Outbound) EchoMode() string { return o.echo.mode }

// Stats returns the counters.
func (o *Outbound) Stats() Stats {
	o.mu.Lock()
	live := uint64(o.udp.len())
	o.mu.Unlock()
	return Stats{
		TCPRelayed:  o.tcpRelayed.Load(),
		TCPRefused:  o.tcpRefused.Load(),
		TCPCapped:   o.tcpCapped.Load(),
		UDPFlows:    o.udpFlows.Load(),
		UDPLive:     live,
		UDPDropped:  o.udpDropped.Load(),
		Bypassed:    o.bypassed.Load(),
		EchoSent:    o.echoSent.Load(),
		EchoReplies: o.echoReplies.Load(),
		EchoDropped: o.echoDropped.Load(),
		Errors:      o.dataErrors.Load(),
	}
}

// Close stops forwarding: it cancels dials in progress, closes every
// relayed connection, UDP flow and echo socket, and waits for the
// goroutines it started. Requests arriving afterwards are refused.
func (o *Outbound) Close() {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.closed = true
	live := make([]io.Closer, 0, len(o.live))
	for c := range o.live {
		live = append(live, c)
	}
	flows := o.udp.removeAll()
	poller := o.poller
	o.mu.Unlock()

	o.cancel()
	for _, c := range live {
		c.Close()
	}
	for _, f := range flows {
		f.close()
	}
	if poller != nil {
		poller.close()
	}
	o.echo.close()
	o.wg.Wait()
}

// dataError counts a data-path error and logs it through the rate limiter.
func (o *Outbound) dataError(msg string, args ...any) {
	o.dataErrors.Add(1)
	o.limited.warn(msg, args...)
}

// hostTarget maps a destination inside the network to the host address to
// dial, and reports whether the destination may be forwarded at all.
// Loopback, multicast, broadcast and unspecified destinations never are:
// the host's loopback is reachable only through the gateway address and
// only with HostLoopback.
func (o *Outbound) hostTarget(dst netip.AddrPort) (netip.AddrPort, bool) {
	a := dst.Addr().Unmap()
	if dst.Port() == 0 {
		return netip.AddrPort{}, false
	}
	if a == o.cfg.Gateway {
		if !o.cfg.HostLoopback {
			return netip.AddrPort{}, false
		}
		if a.Is4() {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port()), true
		}
		return netip.AddrPortFrom(netip.IPv6Loopback(), dst.Port()), true
	}
	if !forwardable(a) {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, dst.Port()), true
}

// Bypass reports where a sandbox's own TCP or UDP connection to dst may
// go through a host socket of its own instead of through the gateway
// (sandbox.BypassRoute): to the host address the NAT would have dialed
// for it. Destinations on the network other than the gateway stay there,
// where the switch and the network's rules carry them.
func (o *Outbound) Bypass(dst netip.AddrPort) (netip.AddrPort, bool) {
	a := dst.Addr().Unmap()
	if o.cfg.Subnet.IsValid() && o.cfg.Subnet.Contains(a) && a != o.cfg.Gateway {
		return netip.AddrPort{}, false
	}
	target, ok := o.hostTarget(dst)
	if ok {
		o.bypassed.Add(1)
	}
	return target, ok
}

// forwardable reports whether a is a unicast address host sockets may
// reach on the guest's behalf.
func forwardable(a netip.Addr) bool {
	switch {
	case !a.IsValid(), a.IsLoopback(), a.IsMulticast(), a.IsUnspecified():
		return false
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return false
	case a.Is6() && a.IsLinkLocalUnicast():
		// Needs a zone the guest cannot name.
		return false
	}
	return true
}

// guestConn is the guest side of an accepted TCP connection.
type guestConn interface {
	net.Conn
	CloseWrite() error
}

// tcpRequest is a pending guest SYN: the parts of *stack.TCPRequest the
// TCP path uses, so that the path can be tested without a gateway.
type tcpRequest interface {
	Accept() (guestConn, error)
	Reject()
	// Translated reports whether the gateway carries the connection
	// itself (stack.Config.TranslateTCP): Translate answers it instead of
	// Accept.
	Translated() bool
	Translate(host *net.TCPConn, onDone func()) (io.Closer, error)
}

// handleTCP is the outbound TCP path described at the top of this file.
func (o *Outbound) handleTCP(src, dst netip.AddrPort, r tcpRequest) {
	target, ok := o.hostTarget(dst)
	if !ok {
		o.tcpRefused.Add(1)
		r.Reject()
		return
	}
	if !o.inflight.acquire(src.Addr()) {
		o.tcpCapped.Add(1)
		o.limited.warn("nat: tcp connection attempts over cap, refusing", "src", src, "dst", dst)
		r.Reject()
		return
	}
	host, err := o.dialHostTCP(target)
	if err != nil {
		o.inflight.release(src.Addr())
		o.tcpRefused.Add(1)
		o.logger.Debug("nat: tcp dial failed", "src", src, "dst", dst, "err", err)
		r.Reject()
		return
	}
	if r.Translated() {
		o.translate(src, dst, r, host)
		return
	}
	guest, err := r.Accept()
	o.inflight.release(src.Addr())
	if err != nil {
		host.Close()
		o.dataError("nat: tcp accept failed", "src", src, "dst", dst, "err", err)
		return
	}
	if !o.track(guest, host) {
		guest.Close()
		host.Close()
		return
	}
	o.tcpRelayed.Add(1)
	defer o.untrack(guest, host)
	res := relay(guest, host)
	if res.AToBErr != nil || res.BToAErr != nil {
		o.logger.Debug("nat: tcp relay ended with error", "src", src, "dst", dst,
			"sent", res.AToB, "received", res.BToA, "send_err", res.AToBErr, "receive_err", res.BToAErr)
	}
}

// translate hands a dialed connection to the gateway's translator, which
// carries it without a relay; the in-flight slot is released once it is
// answered.
func (o *Outbound) translate(src, dst netip.AddrPort, r tcpRequest, host net.Conn) {
	defer o.inflight.release(src.Addr())
	tc, ok := host.(*net.TCPConn)
	if !ok {
		// A test dialer's conn the translator cannot read raw.
		host.Close()
		o.tcpRefused.Add(1)
		r.Reject()
		return
	}
	h := &flowHandle{}
	if !o.track(h) {
		tc.Close()
		r.Reject()
		return
	}
	fl, err := r.Translate(tc, func() { o.untrack(h) })
	if err != nil {
		o.untrack(h)
		o.dataError("nat: tcp translate failed", "src", src, "dst", dst, "err", err)
		return
	}
	o.tcpRelayed.Add(1)
	h.set(fl)
}

// flowHandle lets Close reach a translated flow that may not exist yet
// when it is tracked.
type flowHandle struct {
	mu     sync.Mutex
	c      io.Closer
	closed bool
}

func (h *flowHandle) set(c io.Closer) {
	h.mu.Lock()
	h.c = c
	closed := h.closed
	h.mu.Unlock()
	if closed {
		c.Close()
	}
}

// Close aborts the flow, now or as soon as it is set.
func (h *flowHandle) Close() error {
	h.mu.Lock()
	c := h.c
	h.closed = true
	h.mu.Unlock()
	if c != nil {
		return c.Close()
	}
	return nil
}

// dialHostTCP dials target with the configured timeout.
func (o *Outbound) dialHostTCP(target netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(o.ctx, o.cfg.DialTimeout)
	defer cancel()
	c, err := o.dialer.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok && o.setKeepAlive {
		if err := tc.SetKeepAliveConfig(hostKeepAlive); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// track registers connections for Close (and the relay for Close's wait)
// and reports false once the Outbound is closed. Registering happens under
// o.mu so that Close cannot miss a relay that starts concurrently.
func (o *Outbound) track(cs ...io.Closer) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	for _, c := range cs {
		o.live[c] = struct{}{}
	}
	o.wg.Add(1)
	return true
}

// untrack undoes a successful track once the relay has ended.
func (o *Outbound) untrack(cs ...io.Closer) {
	o.mu.Lock()
	for _, c := range cs {
		delete(o.live, c)
	}
	o.mu.Unlock()
	o.wg.Done()
}

// errClosed refuses work that arrives after Close (or Remove).
var errClosed = errors.New("closed")
