package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp/cmpopts"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	vswitch "github.com/usernet/usernet/switch"
)

// Test topology: one switch, the gateway under test on it, and guests on
// pipe ports: either raw (the test reads and writes frames) or a second
// gVisor stack (a "guest kernel").

// cmpNet lets cmp compare netip values (comparable, unexported fields).
var cmpNet = cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{})

var (
	gwPrefix = netip.MustParsePrefix("172.17.0.1/16")
	gwMAC    = vswitch.MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x01}
)

// testTimeout bounds every wait in these tests; a correct run never gets
// near it.
const testTimeout = 20 * time.Second

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// fakeClock is a settable clock for DHCP leases.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type testNet struct {
	sw *vswitch.Switch
	gw *Gateway
}

// newTestNet starts a switch and a gateway from cfg (Addr, MAC and Name
// filled in when unset) attached to it.
func newTestNet(t *testing.T, cfg Config) *testNet {
	t.Helper()
	if !cfg.Addr.IsValid() {
		cfg.Addr = gwPrefix
	}
	if cfg.MAC == (vswitch.MAC{}) {
		cfg.MAC = gwMAC
	}
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	sw := vswitch.New(vswitch.Config{})
	gw, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := gw.Attach(sw); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	t.Cleanup(func() {
		gw.Close()
		sw.Close()
	})
	return &testNet{sw: sw, gw: gw}
}

// rawGuest is a pipe port the test drives frame by frame.
type rawGuest struct {
	t    *testing.T
	p    *vswitch.PipePort
	mac  vswitch.MAC
	addr netip.Addr
}

func (n *testNet) addRaw(t *testing.T, mac vswitch.MAC, addr netip.Addr) *rawGuest {
	t.Helper()
	a, b := vswitch.NewPipe(true)
	att, err := n.sw.Attach(a, vswitch.PortConfig{Name: "raw-" + mac.String(), Offloads: true})
	if err != nil {
		t.Fatalf("attach raw guest: %v", err)
	}
	t.Cleanup(att.Detach)
	return &rawGuest{t: t, p: b, mac: mac, addr: addr}
}

func (g *rawGuest) send(frame []byte) {
	g.t.Helper()
	if err := g.p.Send(vswitch.VnetHdr{}, frame); err != nil {
		g.t.Fatalf("send: %v", err)
	}
}

// expect returns the first frame for which match is true, answering ARP
// requests for the guest's address on the way and skipping other frames.
func (g *rawGuest) expect(ctx context.Context, what string, match func([]byte) bool) []byte {
	g.t.Helper()
	for {
		_, d, err := g.p.Receive(ctx)
		if err != nil {
			g.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(d) {
			return d
		}
		g.answerARP(d)
	}
}

func (g *rawGuest) answerARP(d []byte) {
	if !g.addr.IsValid() || len(d) < header.EthernetMinimumSize+header.ARPSize || header.Ethernet(d).Type() != header.ARPProtocolNumber {
		return
	}
	req := header.ARP(d[header.EthernetMinimumSize:])
	if req.Op() != header.ARPRequest || netip.AddrFrom4([4]byte(req.ProtocolAddressTarget())) != g.addr {
		return
	}
	g.send(arpFrame(header.ARPReply, g.mac, vswitch.MAC(req.HardwareAddressSender()), g.addr, netip.AddrFrom4([4]byte(req.ProtocolAddressSender()))))
}

// arpFrame builds an ARP packet from sha/spa to tha/tpa; a request goes
// to the broadcast MAC.
func arpFrame(op header.ARPOp, sha, tha vswitch.MAC, spa, tpa netip.Addr) []byte {
	b := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	dst := tha
	if op == header.ARPRequest {
		dst = vswitch.Broadcast
		tha = vswitch.MAC{}
	}
	copy(b[0:6], dst[:])
	copy(b[6:12], sha[:])
	binary.BigEndian.PutUint16(b[12:], uint16(header.ARPProtocolNumber))
	a := header.ARP(b[header.EthernetMinimumSize:])
	a.SetIPv4OverEthernet()
	a.SetOp(op)
	copy(a.HardwareAddressSender(), sha[:])
	s4, t4 := spa.As4(), tpa.As4()
	copy(a.ProtocolAddressSender(), s4[:])
	copy(a.HardwareAddressTarget(), tha[:])
	copy(a.ProtocolAddressTarget(), t4[:])
	return b
}

// ipv4Frame builds an Ethernet+IPv4 frame around an L4 payload whose
// checksum (if any) the caller has filled in.
func ipv4Frame(dstMAC, srcMAC vswitch.MAC, src, dst netip.Addr, proto tcpip.TransportProtocolNumber, l4 []byte) []byte {
	b := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+len(l4))
	copy(b[0:6], dstMAC[:])
	copy(b[6:12], srcMAC[:])
	binary.BigEndian.PutUint16(b[12:], uint16(header.IPv4ProtocolNumber))
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + len(l4)),
		TTL:         63,
		Protocol:    uint8(proto),
		SrcAddr:     toTCPIP(src),
		DstAddr:     toTCPIP(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(ip[header.IPv4MinimumSize:], l4)
	return b
}

// echoRequest builds an ICMPv4 echo request frame.
func echoRequest(srcMAC, dstMAC vswitch.MAC, src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	icmpb := make([]byte, header.ICMPv4MinimumSize+len(payload))
	ic := header.ICMPv4(icmpb)
	ic.SetType(header.ICMPv4Echo)
	ic.SetIdent(id)
	ic.SetSequence(seq)
	copy(icmpb[header.ICMPv4MinimumSize:], payload)
	ic.SetChecksum(^checksum.Checksum(icmpb, 0))
	return ipv4Frame(dstMAC, srcMAC, src, dst, header.ICMPv4ProtocolNumber, icmpb)
}

// echoFields is what the tests compare of an ICMPv4 echo frame.
type echoFields struct {
	DstMAC, SrcMAC vswitch.MAC
	Src, Dst       netip.Addr
	Type           header.ICMPv4Type
	ID, Seq        uint16
	Payload        string
	IPChecksumOK   bool
	ICMPChecksumOK bool
}

// parseEcho returns the echo fields of d, or false if d is not ICMPv4.
func parseEcho(d []byte) (echoFields, bool) {
	if len(d) < header.EthernetMinimumSize+header.IPv4MinimumSize+header.ICMPv4MinimumSize || header.Ethernet(d).Type() != header.IPv4ProtocolNumber {
		return echoFields{}, false
	}
	ip := header.IPv4(d[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.ICMPv4ProtocolNumber {
		return echoFields{}, false
	}
	ic := header.ICMPv4(ip.Payload())
	return echoFields{
		DstMAC:         vswitch.MAC(d[0:6]),
		SrcMAC:         vswitch.MAC(d[6:12]),
		Src:            fromTCPIP(ip.SourceAddress()),
		Dst:            fromTCPIP(ip.DestinationAddress()),
		Type:           ic.Type(),
		ID:             ic.Ident(),
		Seq:            ic.Sequence(),
		Payload:        string(ic[header.ICMPv4MinimumSize:]),
		IPChecksumOK:   ip.IsChecksumValid(),
		ICMPChecksumOK: checksum.Checksum(ic, 0) == 0xffff,
	}, true
}

// guest is a second gVisor stack on a pipe port: a guest kernel.
type guest struct {
	s    *gstack.Stack
	addr netip.Addr
	mac  vswitch.MAC

	// gsoIn counts GSO super-frames the guest received from the switch.
	gsoIn atomic.Uint64
	// pureACKsIn counts pure TCP ACKs (no payload, flags ACK only) the
	// guest received.
	pureACKsIn atomic.Uint64
	// dropIn, when set, drops the frames from the switch it returns true
	// for, as a full queue on the way to the guest would.
	dropIn atomic.Pointer[func(*vswitch.Frame) bool]
}

// isPureACK reports whether an Ethernet frame is an IPv4 TCP segment with
// no payload and only the ACK flag.
func isPureACK(d []byte) bool {
	if len(d) < header.EthernetMinimumSize || header.Ethernet(d).Type() != header.IPv4ProtocolNumber {
		return false
	}
	ip := header.IPv4(d[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.TCPProtocolNumber {
		return false
	}
	tcp := header.TCP(ip.Payload())
	return len(tcp) >= header.TCPMinimumSize && int(tcp.DataOffset()) == len(tcp) && tcp.Flags() == header.TCPFlagAck
}

// addGuest attaches a guest stack with address addr (in gwPrefix) and a
// default route via the gateway. offloads selects a vnet-style guest
// (GSO and partial checksums both ways) or a plain one (the switch
// segments and checksums for it).
func (n *testNet) addGuest(t *testing.T, addr netip.Addr, mac vswitch.MAC, offloads bool) *guest {
	t.Helper()
	mtu := uint32(n.gw.MTU())
	ch := channel.New(1024, mtu+header.EthernetMinimumSize, tcpip.LinkAddress(mac[:]))
	if offloads {
		ch.SupportedGSOKind = gstack.HostGSOSupported
		ch.LinkEPCapabilities = gstack.CapabilityRXChecksumOffload
	}
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	if err := s.CreateNIC(1, ethernet.New(ch)); err != nil {
		t.Fatalf("guest NIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: toTCPIP(addr), PrefixLen: gwPrefix.Bits()},
	}
	if err := s.AddProtocolAddress(1, pa, gstack.AddressProperties{}); err != nil {
		t.Fatalf("guest address: %v", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: toTCPIP(n.gw.Addr()), NIC: 1}})

	a, b := vswitch.NewPipe(offloads)
	att, err := n.sw.Attach(a, vswitch.PortConfig{Name: "guest-" + addr.String(), Offloads: offloads})
	if err != nil {
		t.Fatalf("attach guest: %v", err)
	}
	g := &guest{s: s, addr: addr, mac: mac}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // guest -> switch
		defer wg.Done()
		for {
			pkt := ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			f := frameFromPacket(pkt)
			pkt.DecRef()
			err := b.WriteFrames([]*vswitch.Frame{f})
			f.DecRef()
			if err != nil {
				return
			}
		}
	}()
	go func() { // switch -> guest
		defer wg.Done()
		frames := make([]*vswitch.Frame, 16)
		for {
			n, err := b.ReadFrames(frames)
			if err != nil {
				return
			}
			for _, f := range frames[:n] {
				if drop := g.dropIn.Load(); drop != nil && (*drop)(f) {
					f.DecRef()
					continue
				}
				if f.Hdr.IsGSO() {
					g.gsoIn.Add(1)
				}
				if isPureACK(f.Data) {
					g.pureACKsIn.Add(1)
				}
				pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(f.Data)})
				ch.InjectInbound(0, pkt)
				pkt.DecRef()
				f.DecRef()
			}
			clear(frames[:n])
		}
	}()
	t.Cleanup(func() {
		att.Detach() // closes both pipe ends: the reader pump returns
		cancel()
		wg.Wait()
		s.Close()
		s.Wait()
	})
	return g
}

func (g *guest) fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: toTCPIP(ap.Addr()), Port: ap.Port()}
}

// checkRefused reports whether err is a refused connection.
func checkRefused(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Err != nil && opErr.Err.Error() == (&tcpip.ErrConnectionRefused{}).String()
}

// checkEcho sends data on c, half-closes it, and checks that c's peer,
// an echo server, sent back exactly data before closing.
func checkEcho(t *testing.T, c interface {
	io.ReadWriter
	CloseWrite() error
}, data []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echoed %d bytes differing from the %d sent", len(got), len(data))
	}
}
