package nat

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/usernet/usernet/stack"
	vswitch "github.com/usernet/usernet/switch"
)

// A test network: a switch, the real gateway (stack.Gateway) with an
// Outbound as its handlers, and guests that are plain gVisor stacks on
// in-memory pipes attached to the switch, the way a container's kernel
// sits behind a TAP.

const testMTU = 1500

var (
	testPrefix = netip.MustParsePrefix("172.17.0.1/16")
	guestAddr  = netip.MustParseAddr("172.17.0.2")
)

type testNet struct {
	sw  *vswitch.Switch
	gw  *stack.Gateway
	out *Outbound
}

// newTestNet builds the switch and gateway; cfg.Gateway is filled in.
// Guests' TCP goes through netstack and a relay.
func newTestNet(t testing.TB, cfg Config) *testNet {
	t.Helper()
	return newTestNetTCP(t, cfg, false)
}

// tcpModes names the gateway's two ways of carrying guests' TCP, for
// tests that run in both.
var tcpModes = map[string]bool{"netstack": false, "translated": true}

// newTestNetTCP is newTestNet with guests' TCP translated by the gateway
// (stack.Config.TranslateTCP) when translate is set.
func newTestNetTCP(t testing.TB, cfg Config, translate bool) *testNet {
	t.Helper()
	cfg.Gateway = testPrefix.Addr()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	out := NewOutbound(cfg)
	g, err := stack.New(stack.Config{Name: "test", MTU: testMTU, Addr: testPrefix, Logger: cfg.Logger, TCP: out, UDP: out, Echo: out, TranslateTCP: translate})
	if err != nil {
		t.Fatal(err)
	}
	sw := vswitch.New(vswitch.Config{Logger: cfg.Logger})
	if _, err := g.Attach(sw); err != nil {
		t.Fatal(err)
	}
	n := &testNet{sw: sw, gw: g, out: out}
	t.Cleanup(func() {
		// Outbound first: it ends relays, which unblocks gateway handlers.
		out.Close()
		g.Close()
		sw.Close()
	})
	return n
}

// guest is a gVisor stack on the test network with one NIC (ID 1).
type guest struct {
	s    *gstack.Stack
	addr netip.Addr
}

// addGuest attaches a gVisor stack with address addr (default route via
// the gateway) to the network. Its port is attached without offloads, so
// the switch segments the gateway's TSO frames and completes checksums,
// as it would for a TAP without a vnet header.
func (n *testNet) addGuest(t testing.TB, addr netip.Addr) *guest {
	t.Helper()
	mac := tcpip.LinkAddress([]byte{0x02, 0x42, 0xac, 0x11, addr.As4()[2], addr.As4()[3]})
	ch := channel.New(4096, testMTU+header.EthernetMinimumSize, mac)
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	if err := s.CreateNIC(1, ethernet.New(ch)); err != nil {
		t.Fatalf("create NIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{
		Address: tcpip.AddrFrom4(addr.As4()), PrefixLen: testPrefix.Bits()}}
	if err := s.AddProtocolAddress(1, pa, gstack.AddressProperties{}); err != nil {
		t.Fatalf("add address: %v", err)
	}
	subnet := tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(testPrefix.Masked().Addr().As4()), PrefixLen: testPrefix.Bits()}.Subnet()
	s.SetRouteTable([]tcpip.Route{
		{Destination: subnet, NIC: 1},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(testPrefix.Addr().As4()), NIC: 1},
	})
	p := &guestPort{ch: ch}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	att, err := n.sw.Attach(p, vswitch.PortConfig{Name: "guest", Offloads: false})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		att.Detach()
		s.Close()
		s.Wait()
	})
	return &guest{s: s, addr: addr}
}

// guestPort connects a guest stack's link endpoint to the switch, with no
// queue of its own that could drop: frames from the switch are injected
// into the stack directly, frames from the stack are read by the switch's
// reader goroutine.
type guestPort struct {
	ch     *channel.Endpoint
	ctx    context.Context
	cancel context.CancelFunc
}

var (
	_ vswitch.Port   = (*guestPort)(nil)
	_ vswitch.Reader = (*guestPort)(nil)
)

func (p *guestPort) WriteFrames(frames []*vswitch.Frame) error {
	for _, f := range frames {
		pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(f.Data)})
		p.ch.InjectInbound(0, pkt)
		pkt.DecRef()
	}
	return nil
}

func (p *guestPort) ReadFrames(frames []*vswitch.Frame) (int, error) {
	pkt := p.ch.ReadContext(p.ctx)
	n := 0
	for pkt != nil {
		v := pkt.ToView()
		frames[n].Resize(v.Size())
		copy(frames[n].Data, v.AsSlice())
		v.Release()
		pkt.DecRef()
		n++
		if n == len(frames) {
			break
		}
		pkt = p.ch.Read()
	}
	if n == 0 {
		return 0, net.ErrClosed
	}
	return n, nil
}

func (p *guestPort) Close() error {
	p.cancel()
	return nil
}

// full returns ap as a gVisor address on NIC 1.
func full(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(ap.Addr().As4()), Port: ap.Port()}
}

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }
