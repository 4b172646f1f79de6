package stack

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	vswitch "github.com/usernet/usernet/switch"
)

var (
	rawMAC  = vswitch.MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x05}
	rawAddr = netip.MustParseAddr("172.17.0.5")
)

func isARPReply(d []byte) bool {
	return len(d) >= header.EthernetMinimumSize+header.ARPSize &&
		header.Ethernet(d).Type() == header.ARPProtocolNumber &&
		header.ARP(d[header.EthernetMinimumSize:]).Op() == header.ARPReply
}

func TestGatewayARP(t *testing.T) {
	ctx := testContext(t)
	n := newTestNet(t, Config{})
	g := n.addRaw(t, rawMAC, rawAddr)

	// Who has 172.17.0.9 (nobody)? Netstack, spoofing, would claim it;
	// the port must drop that reply. Then who has the gateway? The first
	// reply the guest sees must be the gateway's own.
	g.send(arpFrame(header.ARPRequest, rawMAC, vswitch.MAC{}, rawAddr, netip.MustParseAddr("172.17.0.9")))
	g.send(arpFrame(header.ARPRequest, rawMAC, vswitch.MAC{}, rawAddr, gwPrefix.Addr()))
	d := g.expect(ctx, "ARP reply", isARPReply)

	type arpFields struct {
		DstMAC, SenderMAC vswitch.MAC
		Sender, Target    netip.Addr
	}
	a := header.ARP(d[header.EthernetMinimumSize:])
	got := arpFields{
		DstMAC:    vswitch.MAC(d[0:6]),
		SenderMAC: vswitch.MAC(a.HardwareAddressSender()),
		Sender:    netip.AddrFrom4([4]byte(a.ProtocolAddressSender())),
		Target:    netip.AddrFrom4([4]byte(a.ProtocolAddressTarget())),
	}
	want := arpFields{DstMAC: rawMAC, SenderMAC: gwMAC, Sender: gwPrefix.Addr(), Target: rawAddr}
	if diff := cmp.Diff(want, got, cmpNet); diff != "" {
		t.Errorf("ARP reply (-want +got):\n%s", diff)
	}
	if got := n.gw.Stats().DropForeignARP; got != 1 {
		t.Errorf("DropForeignARP = %d, want 1 (the reply netstack made up for 172.17.0.9)", got)
	}
}

// echoRecorder is an EchoHandler that answers every request at once.
type echoRecorder struct {
	mu   sync.Mutex
	got  []Echo
	echo bool
}

func (r *echoRecorder) HandleEcho(e *Echo) {
	r.mu.Lock()
	r.got = append(r.got, Echo{Src: e.Src, Dst: e.Dst, ID: e.ID, Seq: e.Seq, TTL: e.TTL, Payload: e.Payload})
	r.mu.Unlock()
	if r.echo {
		e.Reply(append([]byte("re:"), e.Payload...))
	}
}

func TestGatewayPing(t *testing.T) {
	remote := netip.MustParseAddr("192.0.2.7")
	tests := []struct {
		name      string
		dst       netip.Addr
		handler   bool
		wantReply echoFields
		wantEcho  []Echo
	}{
		{
			name:    "gateway address answered by netstack",
			dst:     gwPrefix.Addr(),
			handler: true,
			wantReply: echoFields{
				DstMAC: rawMAC, SrcMAC: gwMAC, Src: gwPrefix.Addr(), Dst: rawAddr,
				Type: header.ICMPv4EchoReply, ID: 0x1234, Seq: 7, Payload: "ping",
				IPChecksumOK: true, ICMPChecksumOK: true,
			},
		},
		{
			name:    "foreign address goes to the handler",
			dst:     remote,
			handler: true,
			wantReply: echoFields{
				DstMAC: rawMAC, SrcMAC: gwMAC, Src: remote, Dst: rawAddr,
				Type: header.ICMPv4EchoReply, ID: 0x1234, Seq: 7, Payload: "re:ping",
				IPChecksumOK: true, ICMPChecksumOK: true,
			},
			wantEcho: []Echo{{Src: rawAddr, Dst: remote, ID: 0x1234, Seq: 7, TTL: 63, Payload: []byte("ping")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			rec := &echoRecorder{echo: true}
			n := newTestNet(t, Config{Echo: rec})
			g := n.addRaw(t, rawMAC, rawAddr)
			g.send(echoRequest(rawMAC, gwMAC, rawAddr, tt.dst, 0x1234, 7, []byte("ping")))
			d := g.expect(ctx, "echo reply", func(d []byte) bool {
				e, ok := parseEcho(d)
				return ok && e.Type == header.ICMPv4EchoReply
			})
			got, _ := parseEcho(d)
			if diff := cmp.Diff(tt.wantReply, got, cmpNet); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if diff := cmp.Diff(tt.wantEcho, rec.got, cmpNet, cmpopts.IgnoreUnexported(Echo{})); diff != "" {
				t.Errorf("handler saw (-want +got):\n%s", diff)
			}
		})
	}
}

// isEchoReplyID returns a matcher for echo replies with identifier id.
func isEchoReplyID(id uint16) func([]byte) bool {
	return func(d []byte) bool {
		e, ok := parseEcho(d)
		return ok && e.Type == header.ICMPv4EchoReply && e.ID == id
	}
}

// isAnyEchoReply matches every echo reply.
func isAnyEchoReply(d []byte) bool {
	e, ok := parseEcho(d)
	return ok && e.Type == header.ICMPv4EchoReply
}

// warmUp pings the gateway once, so that it knows the guest's MAC and
// later replies need no ARP exchange that could reorder them.
func warmUp(ctx context.Context, g *rawGuest) {
	g.t.Helper()
	g.send(echoRequest(g.mac, gwMAC, g.addr, gwPrefix.Addr(), 0xffff, 0, nil))
	g.expect(ctx, "warm-up echo reply", isEchoReplyID(0xffff))
}

// TestGatewayPingForeignNotFaked checks that a ping to a foreign address
// is never answered by anyone but the EchoHandler, with or without one:
// the first echo reply the guest sees is for a later ping to the gateway.
func TestGatewayPingForeignNotFaked(t *testing.T) {
	tests := []struct {
		name    string
		handler EchoHandler
	}{
		{name: "nil handler", handler: nil},
		{name: "silent handler", handler: &echoRecorder{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			n := newTestNet(t, Config{Echo: tt.handler})
			g := n.addRaw(t, rawMAC, rawAddr)
			warmUp(ctx, g)
			g.send(echoRequest(rawMAC, gwMAC, rawAddr, netip.MustParseAddr("192.0.2.8"), 1, 1, []byte("a")))
			g.send(echoRequest(rawMAC, gwMAC, rawAddr, gwPrefix.Addr(), 2, 2, []byte("b")))
			got, _ := parseEcho(g.expect(ctx, "echo reply", isAnyEchoReply))
			if got.Src != gwPrefix.Addr() || got.ID != 2 {
				t.Errorf("first echo reply is from %v id %d, want the gateway's to id 2", got.Src, got.ID)
			}
		})
	}
}

func neighborSolicit(srcMAC, dstMAC vswitch.MAC, src, target netip.Addr) []byte {
	const nsLen = header.ICMPv6NeighborSolicitMinimumSize + 8 // + SLLA option
	b := make([]byte, header.EthernetMinimumSize+header.IPv6MinimumSize+nsLen)
	dst := toTCPIP(target)
	copy(b[0:6], dstMAC[:])
	copy(b[6:12], srcMAC[:])
	binary.BigEndian.PutUint16(b[12:], uint16(header.IPv6ProtocolNumber))
	ip := header.IPv6(b[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     nsLen,
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          255,
		SrcAddr:           toTCPIP(src),
		DstAddr:           dst,
	})
	icmp := header.ICMPv6(ip.Payload())
	icmp.SetType(header.ICMPv6NeighborSolicit)
	ns := header.NDPNeighborSolicit(icmp.MessageBody())
	ns.SetTargetAddress(toTCPIP(target))
	ns.Options().Serialize(header.NDPOptionsSerializer{header.NDPSourceLinkLayerAddressOption(srcMAC[:])})
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: toTCPIP(src), Dst: dst}))
	return b
}

func TestGatewayDropsForeignNA(t *testing.T) {
	ctx := testContext(t)
	n := newTestNet(t, Config{})
	g := n.addRaw(t, rawMAC, rawAddr)
	// Netstack, spoofing, would advertise fe80::99 as its own. The gateway
	// has no IPv6 address, so nothing may come back; the ARP exchange
	// after it shows the solicitation was processed.
	g.send(neighborSolicit(rawMAC, gwMAC, netip.MustParseAddr("fe80::5"), netip.MustParseAddr("fe80::99")))
	g.send(arpFrame(header.ARPRequest, rawMAC, vswitch.MAC{}, rawAddr, gwPrefix.Addr()))
	d := g.expect(ctx, "ARP reply or neighbour advertisement", func(d []byte) bool {
		return isARPReply(d) || header.Ethernet(d).Type() == header.IPv6ProtocolNumber
	})
	if !isARPReply(d) {
		t.Errorf("got an IPv6 frame before the ARP reply: % x", d)
	}
	if got := n.gw.Stats().DropForeignNA; got != 1 {
		t.Errorf("DropForeignNA = %d, want 1", got)
	}
}

// TestGatewayIgnoresOtherHosts sends a ping for the gateway's address to
// another MAC, as the switch floods unknown unicast: the gateway must not
// answer what was meant for someone else.
func TestGatewayIgnoresOtherHosts(t *testing.T) {
	ctx := testContext(t)
	n := newTestNet(t, Config{})
	g := n.addRaw(t, rawMAC, rawAddr)
	other := vswitch.MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x63}
	warmUp(ctx, g)
	g.send(echoRequest(rawMAC, other, rawAddr, gwPrefix.Addr(), 1, 1, []byte("not for you")))
	g.send(echoRequest(rawMAC, gwMAC, rawAddr, gwPrefix.Addr(), 2, 2, []byte("for you")))
	got, _ := parseEcho(g.expect(ctx, "echo reply", isAnyEchoReply))
	if got.ID != 2 {
		t.Errorf("first echo reply has id %d, want 2: the gateway answered a ping sent to another MAC", got.ID)
	}
	if got := n.gw.Stats().DropOtherHost; got != 1 {
		t.Errorf("DropOtherHost = %d, want 1", got)
	}
}

// TestGatewayARPRequestSender checks that an ARP request netstack sends
// while dialling from a spoofed address asks in the gateway's own name,
// so guests never bind a foreign address to the gateway's MAC.
func TestGatewayARPRequestSender(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext(t))
	n := newTestNet(t, Config{})
	g := n.addRaw(t, rawMAC, netip.Addr{}) // does not answer ARP
	done := make(chan struct{})
	go func() {
		defer close(done)
		if c, err := n.gw.DialTCP(ctx, netip.MustParseAddrPort("198.51.100.9:0"), netip.AddrPortFrom(rawAddr, 80)); err == nil {
			c.Close()
		}
	}()
	d := g.expect(ctx, "ARP request", func(d []byte) bool {
		return len(d) >= header.EthernetMinimumSize+header.ARPSize && header.Ethernet(d).Type() == header.ARPProtocolNumber &&
			header.ARP(d[header.EthernetMinimumSize:]).Op() == header.ARPRequest
	})
	cancel()
	<-done
	a := header.ARP(d[header.EthernetMinimumSize:])
	sender := netip.AddrFrom4([4]byte(a.ProtocolAddressSender()))
	target := netip.AddrFrom4([4]byte(a.ProtocolAddressTarget()))
	if sender != gwPrefix.Addr() || target != rawAddr {
		t.Errorf("ARP request: who has %v tell %v; want who has %v tell %v", target, sender, rawAddr, gwPrefix.Addr())
	}
}

func TestTCPBufferMax(t *testing.T) {
	tests := []struct {
		name    string
		max     int
		wantMax int
	}{
		{name: "default keeps gVisor's 4 MiB", max: 0, wantMax: 4 << 20},
		{name: "raised", max: 8 << 20, wantMax: 8 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw, err := New(Config{Addr: gwPrefix, TCPBufferMax: tt.max})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer gw.Close()
			var rcv tcpip.TCPReceiveBufferSizeRangeOption
			var snd tcpip.TCPSendBufferSizeRangeOption
			if err := gw.stack.TransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
				t.Fatal(err)
			}
			if err := gw.stack.TransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
				t.Fatal(err)
			}
			if rcv.Max != tt.wantMax || snd.Max != tt.wantMax {
				t.Errorf("buffer maxima: receive %d, send %d; want %d", rcv.Max, snd.Max, tt.wantMax)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no address", cfg: Config{}},
		{name: "IPv6 address", cfg: Config{Addr: netip.MustParsePrefix("fd00::1/64")}},
		{name: "MTU too small", cfg: Config{Addr: gwPrefix, MTU: 60}},
		{name: "DHCP range outside the network", cfg: Config{Addr: gwPrefix, DHCP: &DHCPConfig{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.0.0.9")}}},
		{name: "DHCP range reversed", cfg: Config{Addr: gwPrefix, DHCP: &DHCPConfig{Start: netip.MustParseAddr("172.17.0.9"), End: netip.MustParseAddr("172.17.0.2")}}},
		{name: "bad search domain", cfg: Config{Addr: gwPrefix, DHCP: &DHCPConfig{Start: netip.MustParseAddr("172.17.0.2"), End: netip.MustParseAddr("172.17.0.9"), SearchDomains: []string{"a..b"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw, err := New(tt.cfg)
			if err == nil {
				gw.Close()
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}
