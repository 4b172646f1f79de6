// Package stack is the glue between usernet's switch and gVisor's netstack:
// TAP devices as switch ports (tap_linux.go), and one gVisor stack per
// network acting as that network's gateway (gateway.go): it answers ARP
// and ICMP for the gateway address, serves DHCP (dhcpserver.go), hands
// guests' outbound TCP and UDP flows and pings to handlers that NAT them
// to host sockets (forward.go, echo.go), and dials into the network for
// published ports. A UDP flow's datagrams after its first skip netstack:
// the gateway carries them between the switch and the flow's socket
// itself (udpshortcut.go). Guests' outbound IPv4 TCP connections skip it
// entirely: the gateway speaks TCP to the guest itself and moves bytes
// straight to and from the host socket (tcptranslate.go).
//
// gVisor's types (tcpip.Address, tcpip.Error) never leave this package;
// its API speaks net/netip and net.Conn.
package stack

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	vswitch "github.com/usernet/usernet/switch"
)

// nicID is the only NIC of every gateway stack.
const nicID tcpip.NICID = 1

// maxSYNInFlight bounds the TCP handshakes gVisor hands to TCPHandler at
// once (one goroutine each); SYNs beyond it are dropped and the guest
// retransmits. The NAT applies its own, tighter per-client caps.
const maxSYNInFlight = 1024

// timeWait is how long a gateway TCP endpoint that closed first stays in
// TIME-WAIT. gVisor keeps the whole endpoint (a few KiB plus its port
// reservation) for that time, and its default of 60 s made every
// connection through a published port (where the gateway is the dialer and
// usually closes first) cost memory and an ephemeral port for a minute:
// 10,000 connections held ~150 MiB, and more than ~470 connections/s would
// run the ephemeral ports out. On this link segments never linger (the only
// buffers are the switch queues), so TIME-WAIT guards nothing a short
// period cannot: it still re-acknowledges a FIN the guest retransmits after
// its minimum RTO (200 ms) when our last ACK was dropped.
const timeWait = 500 * time.Millisecond

// Config configures a Gateway. Zero values of the optional fields mean
// the defaults noted.
type Config struct {
	// Name names the network in logs and the NIC (e.g. "bridge").
	Name string
	// MTU is the network's MTU, and the gateway NIC's; 0 means 1500.
	// gVisor derives its TCP MSS from it.
	MTU int
	// Addr is the gateway's IPv4 address and the network's prefix, e.g.
	// 172.17.0.1/16.
	Addr netip.Prefix
	// MAC is the gateway's MAC address; the zero MAC means 02:42 followed
	// by the IPv4 address, as Docker derives container MACs.
	MAC vswitch.MAC
	// Logger receives the gateway's logs; nil discards them.
	Logger *slog.Logger

	// TCP receives guests' TCP connection attempts; nil refuses them (RST).
	TCP TCPHandler
	// UDP receives the first datagram of each new guest UDP flow; nil
	// drops them.
	UDP UDPHandler
	// Echo receives ICMPv4 echo requests to addresses the gateway does not
	// own; nil drops them. Pings to the gateway itself are always answered.
	Echo EchoHandler
	// DHCP, if set, runs a DHCPv4 server on the gateway.
	DHCP *DHCPConfig

	// TranslateTCP carries guests' IPv4 TCP connections through the
	// TCPHandler without netstack (tcptranslate.go): the handler answers
	// their requests with TCPRequest.Translate.
	TranslateTCP bool

	// TCPBufferMax caps each TCP connection's send and receive buffers in
	// bytes (gVisor auto-tunes up to it); 0 keeps gVisor's 4 MiB. Raise it
	// for high bandwidth-delay paths (NETSTACK.md R4).
	TCPBufferMax int

	// Clock is used for DHCP leases; nil means time.Now.
	Clock func() time.Time
}

// Gateway is one network's gateway: a gVisor stack with one NIC, which is
// a port on the network's switch. It owns the stack; Close tears it down.
// Its methods are safe for concurrent use.
type Gateway struct {
	cfg       Config
	logger    *slog.Logger
	addr      netip.Addr // gateway IPv4 address
	tcpipAddr tcpip.Address
	prefix    netip.Prefix
	mac       vswitch.MAC
	stack     *gstack.Stack
	ep        *endpoint
	dhcp      *dhcpServer // nil without DHCP
	tap       *os.File    // the TAP of a NewFdbased gateway, closed by Close
	stats     counters
	udp       flowMap[*UDPConn] // udpshortcut.go
	tx        txTable           // tcptranslate.go
	closed    atomic.Bool
}

// counters are the gateway's own drop and event counters.
type counters struct {
	dropMalformed   atomic.Uint64
	dropOtherHost   atomic.Uint64
	dropForeignARP  atomic.Uint64
	dropForeignNA   atomic.Uint64
	dropNotAttached atomic.Uint64
	echoHandled     atomic.Uint64
	echoDropped     atomic.Uint64
	dhcpReplies     atomic.Uint64
	dhcpDropped     atomic.Uint64
	udpShortcutIn   atomic.Uint64
	udpShortcutOut  atomic.Uint64
	tcpTranslated   atomic.Uint64
	tcpResent       atomic.Uint64
}

// Stats are a gateway's counters since New.
type Stats struct {
	DropMalformed   uint64 // frames from the switch too short for Ethernet
	DropOtherHost   uint64 // flooded unicast frames for another MAC
	DropForeignARP  uint64 // ARP replies netstack sent for addresses it does not own
	DropForeignNA   uint64 // NDP neighbour advertisements likewise
	DropNotAttached uint64 // frames sent while no switch was attached
	EchoHandled     uint64 // echo requests handed to the EchoHandler
	EchoDropped     uint64 // echo requests and ICMP to foreign addresses dropped (no handler, fragment, broadcast)
	DHCPReplies     uint64 // DHCP OFFER/ACK/NAK sent
	DHCPDropped     uint64 // DHCP requests ignored (malformed, no free address, not for us)
	UDPShortcutIn   uint64 // UDP datagrams from the switch that skipped netstack (udpshortcut.go)
	UDPShortcutOut  uint64 // ... and to the switch
	TCPTranslated   uint64 // TCP connections carried without netstack (tcptranslate.go)
	TCPTranslating  uint64 // ... of them open now
	TCPResent       uint64 // times a translated flow resent from its oldest unacknowledged byte
}

// New creates a gateway stack for one network. It is not connected to
// anything until Attach.
func New(cfg Config) (*Gateway, error) {
	g, err := newGateway(cfg)
	if err != nil {
		return nil, err
	}
	if g.cfg.TranslateTCP && !peekOffsetWorks() {
		g.cfg.TranslateTCP = false
		g.logger.Warn("gateway: TCP translation needs SO_PEEK_OFF on TCP sockets (Linux 6.10 or later); carrying TCP through netstack instead")
	}
	g.ep = &endpoint{g: g, mac: tcpip.LinkAddress(g.mac[:])}
	g.ep.mtu.Store(uint32(g.cfg.MTU))
	g.ep.acks = newACKHolder(g.sendFrames)
	if err := g.start(g.ep); err != nil {
		return nil, err
	}
	return g, nil
}

// newGateway validates cfg and builds everything but the NIC.
func newGateway(cfg Config) (*Gateway, error) {
	if !cfg.Addr.IsValid() || !cfg.Addr.Addr().Is4() {
		return nil, fmt.Errorf("gateway %s: address %v: want an IPv4 address with prefix, e.g. 172.17.0.1/16", cfg.Name, cfg.Addr)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if cfg.MTU < 68 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("gateway %s: MTU %d out of range 68-65535", cfg.Name, cfg.MTU)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	g := &Gateway{
		cfg:    cfg,
		logger: cfg.Logger.With("network", cfg.Name),
		addr:   cfg.Addr.Addr(),
		prefix: cfg.Addr.Masked(),
		mac:    cfg.MAC,
	}
	g.tcpipAddr = toTCPIP(g.addr)
	if g.mac == (vswitch.MAC{}) {
		a := g.addr.As4()
		g.mac = vswitch.MAC{0x02, 0x42, a[0], a[1], a[2], a[3]}
	}
	if cfg.DHCP != nil {
		d, err := newDHCPServer(g, *cfg.DHCP)
		if err != nil {
			return nil, fmt.Errorf("gateway %s: %w", cfg.Name, err)
		}
		g.dhcp = d
	}
	return g, nil
}

// start creates the stack around link: protocols, options, the NIC with
// promiscuous mode and spoofing, the address, routes and forwarders.
func (g *Gateway) start(link gstack.LinkEndpoint) error {
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	g.stack = s
	fail := func(op string, err tcpip.Error) error {
		s.Destroy()
		return fmt.Errorf("gateway %s: %w", g.cfg.Name, convertError(op, err))
	}
	if g.cfg.TCPBufferMax > 0 {
		if err := setTCPBufferMax(s, g.cfg.TCPBufferMax); err != nil {
			return fail("tcp buffer size", err)
		}
	}
	tw := tcpip.TCPTimeWaitTimeoutOption(timeWait)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		return fail("tcp time-wait timeout", err)
	}
	// Keep gVisor's other TCP defaults: SACK, RACK and receive-buffer
	// moderation are on in this version (NETSTACK.md R4).

	// Handlers first: gVisor does not synchronize setting them with
	// delivery, and an fdbased NIC delivers as soon as it exists.
	tcpFwd := tcp.NewForwarder(s, 0, maxSYNInFlight, g.forwardTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(s, g.forwardUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	if err := s.CreateNICWithOptions(nicID, link, gstack.NICOptions{Name: g.cfg.Name}); err != nil {
		return fail("create NIC", err)
	}
	// Promiscuous: packets to any address reach the forwarders, so the
	// gateway can stand in for every remote host. Spoofing: the gateway may
	// send from any address (published ports keep client addresses).
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fail("promiscuous mode", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fail("spoofing", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{
			Address:   g.tcpipAddr,
			PrefixLen: g.cfg.Addr.Bits(),
		},
	}
	if err := s.AddProtocolAddress(nicID, pa, gstack.AddressProperties{}); err != nil {
		return fail("add address", err)
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	g.logger.Debug("gateway started", "addr", g.cfg.Addr, "mac", g.mac, "mtu", g.cfg.MTU)
	return nil
}

// setTCPBufferMax raises (or lowers) the maximum of both TCP buffer
// ranges, keeping gVisor's minimum and default unless the default would
// exceed the new maximum.
func setTCPBufferMax(s *gstack.Stack, maxBytes int) tcpip.Error {
	var rcv tcpip.TCPReceiveBufferSizeRangeOption
	if err := s.TransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return err
	}
	rcv.Max = maxBytes
	rcv.Default = min(rcv.Default, maxBytes)
	rcv.Min = min(rcv.Min, maxBytes)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return err
	}
	var snd tcpip.TCPSendBufferSizeRangeOption
	if err := s.TransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return err
	}
	snd.Max = maxBytes
	snd.Default = min(snd.Default, maxBytes)
	snd.Min = min(snd.Min, maxBytes)
	return s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
}

// Attach connects the gateway to sw as its "gateway" port: offloads on
// (netstack takes and makes TSO super-frames), Block on (netstack feels
// backpressure instead of losing segments), Gateway on (reachable with
// ICC off). A gateway is attached to at most one switch at a time; Detach
// the returned attachment (or Close the gateway) to disconnect it.
func (g *Gateway) Attach(sw *vswitch.Switch) (*vswitch.Attachment, error) {
	if g.ep == nil {
		return nil, fmt.Errorf("gateway %s: attach: gateway runs on a TAP fd of its own", g.cfg.Name)
	}
	if g.ep.att.Load() != nil {
		return nil, fmt.Errorf("gateway %s: attach: already attached", g.cfg.Name)
	}
	att, err := sw.Attach(&port{g: g}, vswitch.PortConfig{Name: "gateway", Offloads: true, Block: true, Gateway: true, Direct: true})
	if err != nil {
		return nil, fmt.Errorf("gateway %s: attach: %w", g.cfg.Name, err)
	}
	if !g.ep.att.CompareAndSwap(nil, att) {
		att.Detach()
		return nil, fmt.Errorf("gateway %s: attach: already attached", g.cfg.Name)
	}
	return att, nil
}

// Addr returns the gateway's IPv4 address.
func (g *Gateway) Addr() netip.Addr { return g.addr }

// Prefix returns the network's prefix (the gateway address masked).
func (g *Gateway) Prefix() netip.Prefix { return g.prefix }

// MAC returns the gateway's MAC address.
func (g *Gateway) MAC() vswitch.MAC { return g.mac }

// TranslatesTCP reports whether guests' TCP connections are translated
// (Config.TranslateTCP, on a kernel that allows it) rather than carried
// by netstack.
func (g *Gateway) TranslatesTCP() bool { return g.cfg.TranslateTCP && g.ep != nil }

// MTU returns the network's MTU.
func (g *Gateway) MTU() int { return g.cfg.MTU }

// Stats returns the gateway's counters.
func (g *Gateway) Stats() Stats {
	c := &g.stats
	return Stats{
		DropMalformed:   c.dropMalformed.Load(),
		DropOtherHost:   c.dropOtherHost.Load(),
		DropForeignARP:  c.dropForeignARP.Load(),
		DropForeignNA:   c.dropForeignNA.Load(),
		DropNotAttached: c.dropNotAttached.Load(),
		EchoHandled:     c.echoHandled.Load(),
		EchoDropped:     c.echoDropped.Load(),
		DHCPReplies:     c.dhcpReplies.Load(),
		DHCPDropped:     c.dhcpDropped.Load(),
		UDPShortcutIn:   c.udpShortcutIn.Load(),
		UDPShortcutOut:  c.udpShortcutOut.Load(),
		TCPTranslated:   c.tcpTranslated.Load(),
		TCPTranslating:  uint64(g.tx.len()),
		TCPResent:       c.tcpResent.Load(),
	}
}

// DialTCP opens a TCP connection from inside the network: from src (the
// zero address means the gateway's; port 0 picks one) to dst, a guest.
// With a foreign src the guest sees that address as the client, which is
// how published ports keep client source IPs; the guest must route src
// via the gateway. The returned conn implements TCPConn (CloseWrite), and
// io.WriterTo as TCPRequest.Accept's does.
func (g *Gateway) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	// Not gonet.DialTCPWithBind: it flattens the tcpip.Error into a
	// string (callers could not tell a refusal from a timeout) and leaks
	// the endpoint when Bind fails.
	c, err := g.dialTCP(ctx, src, dst)
	if err != nil {
		return nil, fmt.Errorf("gateway %s: dial tcp %v->%v: %w", g.cfg.Name, src, dst, err)
	}
	return c, nil
}

func (g *Gateway) dialTCP(ctx context.Context, src, dst netip.AddrPort) (*tcpConn, error) {
	laddr, raddr, proto := g.fullAddrs(src, dst)
	var wq waiter.Queue
	ep, terr := g.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, convertError("new endpoint", terr)
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if terr := ep.Bind(laddr); terr != nil {
		ep.Close()
		return nil, convertError("bind", terr)
	}
	terr = ep.Connect(raddr)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, convertError("connect", terr)
	}
	return newTCPConn(&wq, ep), nil
}

// DialUDP opens a connected UDP socket (a *UDPConn) from inside the
// network, from src (zero address means the gateway's; port 0 picks one)
// to dst.
func (g *Gateway) DialUDP(src, dst netip.AddrPort) (net.Conn, error) {
	laddr, raddr, proto := g.fullAddrs(src, dst)
	// gonet.DialUDP's steps, keeping the endpoint for UDPConn.
	var wq waiter.Queue
	ep, terr := g.stack.NewEndpoint(udp.ProtocolNumber, proto, &wq)
	op := "socket"
	if terr == nil {
		op = "bind"
		if terr = ep.Bind(laddr); terr == nil {
			op = "connect"
			terr = ep.Connect(raddr)
		}
		if terr != nil {
			ep.Close()
		}
	}
	if terr != nil {
		return nil, fmt.Errorf("gateway %s: dial udp %v->%v: %s: %s", g.cfg.Name, src, dst, op, terr)
	}
	return newUDPConn(g, &wq, ep), nil
}

func (g *Gateway) fullAddrs(src, dst netip.AddrPort) (laddr, raddr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) {
	sa := src.Addr()
	if !sa.IsValid() || sa.IsUnspecified() {
		sa = g.addr
	}
	laddr = tcpip.FullAddress{NIC: nicID, Addr: toTCPIP(sa), Port: src.Port()}
	raddr = tcpip.FullAddress{NIC: nicID, Addr: toTCPIP(dst.Addr()), Port: dst.Port()}
	return laddr, raddr, protoOf(dst.Addr())
}

// ListenUDP binds a UDP socket to the gateway's address and port, for a
// service the gateway itself provides (the DNS server on port 53).
// Datagrams to a bound port go to it instead of the UDPHandler.
func (g *Gateway) ListenUDP(port uint16) (net.PacketConn, error) {
	laddr := tcpip.FullAddress{NIC: nicID, Addr: g.tcpipAddr, Port: port}
	c, err := gonet.DialUDP(g.stack, &laddr, nil, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("gateway %s: listen udp :%d: %w", g.cfg.Name, port, err)
	}
	return c, nil
}

// ListenTCP listens on the gateway's address and port, for a service the
// gateway itself provides (DNS over TCP). Connections to a listening port
// go to it instead of the TCPHandler.
func (g *Gateway) ListenTCP(port uint16) (net.Listener, error) {
	laddr := tcpip.FullAddress{NIC: nicID, Addr: g.tcpipAddr, Port: port}
	l, err := gonet.ListenTCP(g.stack, laddr, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("gateway %s: listen tcp :%d: %w", g.cfg.Name, port, err)
	}
	// The translator leaves SYNs to this port to netstack until Close.
	g.tx.listen(port)
	return &gatewayListener{Listener: l, g: g, port: port}, nil
}

// gatewayListener is a netstack listener whose port the translator leaves
// alone while it is open.
type gatewayListener struct {
	net.Listener
	g    *Gateway
	port uint16
	once sync.Once
}

// Close closes the listener and gives its port back to the translator.
func (l *gatewayListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { l.g.tx.unlisten(l.port) })
	return err
}

// Close detaches the gateway from its switch, aborts every connection and
// stops the stack. It must not be called from a handler. Calling it again
// does nothing.
func (g *Gateway) Close() {
	if g.closed.Swap(true) {
		return
	}
	if g.ep != nil {
		if att := g.ep.att.Load(); att != nil {
			att.Detach()
		}
	}
	for _, fl := range g.tx.all() {
		fl.abort()
	}
	g.stack.Close()
	g.stack.Wait()
	if g.ep != nil {
		g.ep.acks.close()
	}
	if g.tap != nil {
		g.tap.Close()
	}
}

func (g *Gateway) now() time.Time { return g.cfg.Clock() }
