package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	vswitch "github.com/usernet/usernet/switch"
)

var (
	macA = vswitch.MAC{0x52, 0x54, 0x00, 0x00, 0x00, 0x0a}
	macB = vswitch.MAC{0x52, 0x54, 0x00, 0x00, 0x00, 0x0b}
)

// dhcpClientFrame builds a client message as a frame: broadcast from
// 0.0.0.0 unless ciaddr is set, in which case it is unicast to the
// gateway (a renewal).
func dhcpClientFrame(mac vswitch.MAC, typ dhcpMsgType, xid uint32, ciaddr, requested, server netip.Addr) []byte {
	m := dhcpMessage{Op: dhcpBootRequest, HType: dhcpHTypeEther, HLen: 6, XID: xid, CIAddr: netip.IPv4Unspecified()}
	copy(m.CHAddr[:], mac[:])
	m.addOption(optMessageType, []byte{byte(typ)})
	if requested.IsValid() {
		a := requested.As4()
		m.addOption(optRequestedIP, a[:])
	}
	if server.IsValid() {
		a := server.As4()
		m.addOption(optServerID, a[:])
	}
	src, dst, dstMAC := netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), vswitch.Broadcast
	if ciaddr.IsValid() {
		m.CIAddr = ciaddr
		src, dst, dstMAC = ciaddr, gwPrefix.Addr(), gwMAC
	}
	payload := m.encode(nil)
	udp := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(udp).Encode(&header.UDPFields{SrcPort: dhcpClientPort, DstPort: dhcpServerPort, Length: uint16(len(udp))})
	copy(udp[header.UDPMinimumSize:], payload)
	return ipv4Frame(dstMAC, mac, src, dst, header.UDPProtocolNumber, udp)
}

// dhcpReply is what the tests compare of a server reply.
type dhcpReply struct {
	DstMAC     vswitch.MAC
	DstIP      netip.Addr
	XID        uint32
	Type       dhcpMsgType
	YIAddr     netip.Addr
	LeaseSecs  uint32
	ChecksumOK bool
}

func parseDHCPReply(t *testing.T, d []byte) (dhcpReply, dhcpMessage) {
	t.Helper()
	ip := header.IPv4(d[header.EthernetMinimumSize:])
	udp := header.UDP(ip.Payload())
	m, err := decodeDHCP(udp[header.UDPMinimumSize:udp.Length()])
	if err != nil {
		t.Fatalf("decode reply: %v", err)
	}
	sum := checksum.Checksum(udp, header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), udp.Length()))
	r := dhcpReply{
		DstMAC:     vswitch.MAC(d[0:6]),
		DstIP:      fromTCPIP(ip.DestinationAddress()),
		XID:        m.XID,
		Type:       m.msgType(),
		YIAddr:     m.YIAddr,
		ChecksumOK: sum == 0xffff && ip.IsChecksumValid(),
	}
	if lt := m.option(optLeaseTime); len(lt) == 4 {
		r.LeaseSecs = binary.BigEndian.Uint32(lt)
	}
	return r, m
}

func isDHCPReply(d []byte) bool {
	if len(d) < header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize || header.Ethernet(d).Type() != header.IPv4ProtocolNumber {
		return false
	}
	ip := header.IPv4(d[header.EthernetMinimumSize:])
	return ip.TransportProtocol() == header.UDPProtocolNumber && header.UDP(ip.Payload()).DestinationPort() == dhcpClientPort
}

// TestDHCPConversation runs clients A and B through a lease's life on a
// range with one leasable address (.10 is reserved). Both clients sit
// behind one switch port, so the gateway sees the steps in order and a
// step that expects no reply is confirmed by the next reply carrying the
// next step's XID.
func TestDHCPConversation(t *testing.T) {
	var (
		gw       = gwPrefix.Addr()
		reserved = netip.MustParseAddr("172.17.0.10")
		leased   = netip.MustParseAddr("172.17.0.11")
		foreign  = netip.MustParseAddr("10.9.9.9")
		bcast    = netip.AddrFrom4([4]byte{255, 255, 255, 255})
		none     netip.Addr
	)
	const leaseTime = time.Hour
	type step struct {
		name               string
		advance            time.Duration
		mac                vswitch.MAC
		typ                dhcpMsgType
		ciaddr, req, srvID netip.Addr
		want               *dhcpReply // nil: no reply
		wantLeases         []Lease
	}
	clock := newFakeClock()
	t0 := clock.Now()
	steps := []step{
		{name: "A discovers, offered the unreserved address", mac: macA, typ: dhcpDiscover,
			want: &dhcpReply{DstMAC: macA, DstIP: leased, Type: dhcpOffer, YIAddr: leased, LeaseSecs: 3600, ChecksumOK: true}},
		{name: "A requests it", mac: macA, typ: dhcpRequest, req: leased, srvID: gw,
			want:       &dhcpReply{DstMAC: macA, DstIP: leased, Type: dhcpAck, YIAddr: leased, LeaseSecs: 3600, ChecksumOK: true},
			wantLeases: []Lease{{MAC: macA, Addr: leased, Expiry: t0.Add(leaseTime)}}},
		{name: "B discovers, nothing free", mac: macB, typ: dhcpDiscover},
		{name: "A renews", advance: 30 * time.Minute, mac: macA, typ: dhcpRequest, ciaddr: leased,
			want:       &dhcpReply{DstMAC: macA, DstIP: leased, Type: dhcpAck, YIAddr: leased, LeaseSecs: 3600, ChecksumOK: true},
			wantLeases: []Lease{{MAC: macA, Addr: leased, Expiry: t0.Add(30*time.Minute + leaseTime)}}},
		{name: "B asks for A's address", mac: macB, typ: dhcpRequest, req: leased,
			want: &dhcpReply{DstMAC: vswitch.Broadcast, DstIP: bcast, Type: dhcpNak, YIAddr: netip.IPv4Unspecified(), ChecksumOK: true}},
		{name: "A asks for a foreign address", mac: macA, typ: dhcpRequest, req: foreign,
			want:       &dhcpReply{DstMAC: vswitch.Broadcast, DstIP: bcast, Type: dhcpNak, YIAddr: netip.IPv4Unspecified(), ChecksumOK: true},
			wantLeases: []Lease{{MAC: macA, Addr: leased, Expiry: t0.Add(30*time.Minute + leaseTime)}}},
		{name: "B asks for the reserved address", mac: macB, typ: dhcpRequest, req: reserved,
			want: &dhcpReply{DstMAC: vswitch.Broadcast, DstIP: bcast, Type: dhcpNak, YIAddr: netip.IPv4Unspecified(), ChecksumOK: true}},
		{name: "A's lease expires, B is offered the address", advance: leaseTime, mac: macB, typ: dhcpDiscover,
			want:       &dhcpReply{DstMAC: macB, DstIP: leased, Type: dhcpOffer, YIAddr: leased, LeaseSecs: 3600, ChecksumOK: true},
			wantLeases: []Lease{}},
		{name: "B takes it", mac: macB, typ: dhcpRequest, req: leased, srvID: gw,
			want:       &dhcpReply{DstMAC: macB, DstIP: leased, Type: dhcpAck, YIAddr: leased, LeaseSecs: 3600, ChecksumOK: true},
			wantLeases: []Lease{{MAC: macB, Addr: leased, Expiry: t0.Add(90*time.Minute + leaseTime)}}},
		{name: "A's request to another server is ignored", mac: macA, typ: dhcpRequest, req: leased, srvID: netip.MustParseAddr("172.17.0.254")},
		{name: "B releases", mac: macB, typ: dhcpRelease, ciaddr: leased},
		{name: "A discovers, offered the released address", mac: macA, typ: dhcpDiscover,
			want:       &dhcpReply{DstMAC: macA, DstIP: leased, Type: dhcpOffer, YIAddr: leased, LeaseSecs: 3600, ChecksumOK: true},
			wantLeases: []Lease{}},
	}

	ctx := testContext(t)
	n := newTestNet(t, Config{
		Clock: clock.Now,
		DHCP: &DHCPConfig{
			Start:         reserved,
			End:           leased,
			DNS:           []netip.Addr{gw},
			SearchDomains: []string{"example.test"},
			LeaseTime:     leaseTime,
			Reserved:      func(a netip.Addr) bool { return a == reserved },
		},
	})
	p := n.addRaw(t, macA, none)
	for i, s := range steps {
		clock.Advance(s.advance)
		xid := uint32(0x1000 + i)
		p.send(dhcpClientFrame(s.mac, s.typ, xid, s.ciaddr, s.req, s.srvID))
		if s.want != nil {
			d := p.expect(ctx, s.name, isDHCPReply)
			got, m := parseDHCPReply(t, d)
			want := *s.want
			want.XID = xid
			if diff := cmp.Diff(want, got, cmpNet); diff != "" {
				t.Errorf("step %q: reply (-want +got):\n%s", s.name, diff)
			}
			if s.want.Type == dhcpOffer {
				checkNetworkOptions(t, &m)
			}
		}
		if s.wantLeases != nil {
			got := n.gw.Leases()
			if got == nil {
				got = []Lease{}
			}
			if diff := cmp.Diff(s.wantLeases, got, cmpNet); diff != "" {
				t.Errorf("step %q: leases (-want +got):\n%s", s.name, diff)
			}
		}
	}
}

// checkNetworkOptions checks the options every OFFER carries.
func checkNetworkOptions(t *testing.T, m *dhcpMessage) {
	t.Helper()
	gw := gwPrefix.Addr().As4()
	search, _ := encodeSearchDomains([]string{"example.test"})
	want := map[uint8][]byte{
		optSubnetMask:    {255, 255, 0, 0},
		optRouter:        gw[:],
		optDNS:           gw[:],
		optMTU:           {0x05, 0xdc},
		optServerID:      gw[:],
		optRenewalTime:   binary.BigEndian.AppendUint32(nil, 1800),
		optRebindingTime: binary.BigEndian.AppendUint32(nil, 3150),
		optSearchDomains: search,
	}
	got := map[uint8][]byte{}
	for code := range want {
		got[code] = m.option(code)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("offer options (-want +got):\n%s", diff)
	}
}

func TestDHCPBroadcastFlag(t *testing.T) {
	ctx := testContext(t)
	n := newTestNet(t, Config{DHCP: &DHCPConfig{Start: netip.MustParseAddr("172.17.1.0"), End: netip.MustParseAddr("172.17.1.9")}})
	g := n.addRaw(t, macA, netip.Addr{})
	f := dhcpClientFrame(macA, dhcpDiscover, 42, netip.Addr{}, netip.Addr{}, netip.Addr{})
	// Set the broadcast flag (BOOTP flags at UDP payload offset 10).
	off := header.EthernetMinimumSize + header.IPv4MinimumSize + header.UDPMinimumSize + 10
	binary.BigEndian.PutUint16(f[off:], dhcpFlagBroadcast)
	g.send(f)
	got, _ := parseDHCPReply(t, g.expect(ctx, "offer", isDHCPReply))
	want := dhcpReply{
		DstMAC: vswitch.Broadcast, DstIP: netip.AddrFrom4([4]byte{255, 255, 255, 255}), XID: 42,
		Type: dhcpOffer, YIAddr: netip.MustParseAddr("172.17.1.0"), LeaseSecs: 3600, ChecksumOK: true,
	}
	if diff := cmp.Diff(want, got, cmpNet); diff != "" {
		t.Errorf("offer (-want +got):\n%s", diff)
	}
}

func TestLeaseTable(t *testing.T) {
	var (
		a1 = netip.MustParseAddr("10.0.0.1")
		a2 = netip.MustParseAddr("10.0.0.2")
		a3 = netip.MustParseAddr("10.0.0.3")
	)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type op struct {
		kind     string // offer, bind, release, decline
		mac      vswitch.MAC
		addr     netip.Addr
		at       time.Duration
		wantAddr netip.Addr
		wantErr  error
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{name: "lowest free first", ops: []op{
			{kind: "offer", mac: macA, wantAddr: a1},
			{kind: "offer", mac: macB, wantAddr: a3},
		}},
		{name: "requested address honoured", ops: []op{
			{kind: "offer", mac: macA, addr: a3, wantAddr: a3},
		}},
		{name: "excluded address never offered or bound", ops: []op{
			{kind: "offer", mac: macA, addr: a2, wantAddr: a1},
			{kind: "bind", mac: macB, addr: a2, wantErr: errAddrNotLeased},
		}},
		{name: "offer hold lapses", ops: []op{
			{kind: "offer", mac: macA, wantAddr: a1},
			{kind: "offer", mac: macB, at: 2 * time.Minute, wantAddr: a1},
		}},
		{name: "same client gets its address again", ops: []op{
			{kind: "bind", mac: macA, addr: a3, wantAddr: a3},
			{kind: "offer", mac: macA, at: 5 * time.Hour, wantAddr: a3},
		}},
		{name: "bound address not given to another", ops: []op{
			{kind: "bind", mac: macA, addr: a1, wantAddr: a1},
			{kind: "bind", mac: macB, addr: a1, wantErr: errAddrInUse},
			{kind: "offer", mac: macB, wantAddr: a3},
		}},
		{name: "expired lease is free", ops: []op{
			{kind: "bind", mac: macA, addr: a1, wantAddr: a1},
			{kind: "bind", mac: macB, addr: a1, at: time.Hour, wantAddr: a1},
		}},
		{name: "release frees at once", ops: []op{
			{kind: "bind", mac: macA, addr: a1, wantAddr: a1},
			{kind: "release", mac: macA, addr: a1},
			{kind: "bind", mac: macB, addr: a1, wantAddr: a1},
		}},
		{name: "release of someone else's lease refused", ops: []op{
			{kind: "bind", mac: macA, addr: a1, wantAddr: a1},
			{kind: "release", mac: macB, addr: a1, wantErr: errNotOfferedHere},
			{kind: "bind", mac: macB, addr: a1, wantErr: errAddrInUse},
		}},
		{name: "declined address held from everyone", ops: []op{
			{kind: "offer", mac: macA, wantAddr: a1},
			{kind: "decline", mac: macA, addr: a1},
			{kind: "offer", mac: macA, wantAddr: a3},
			{kind: "bind", mac: macB, addr: a1, at: 30 * time.Minute, wantErr: errAddrInUse},
		}},
		{name: "range exhausted", ops: []op{
			{kind: "bind", mac: macA, addr: a1, wantAddr: a1},
			{kind: "bind", mac: macB, addr: a3, wantAddr: a3},
			{kind: "offer", mac: vswitch.MAC{2}, wantErr: errNoFreeAddress},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lt := newLeaseTable(a1, a3, func(a netip.Addr) bool { return a == a2 }, time.Hour, time.Minute)
			for i, o := range tt.ops {
				at := t0.Add(o.at)
				var got netip.Addr
				var err error
				switch o.kind {
				case "offer":
					got, err = lt.offer(o.mac, o.addr, at)
				case "bind":
					_, err = lt.bind(o.mac, o.addr, at)
					if err == nil {
						got = o.addr
					}
				case "release":
					err = lt.release(o.mac, o.addr, at)
				case "decline":
					err = lt.decline(o.mac, o.addr, at)
				}
				if err != o.wantErr || got != o.wantAddr {
					t.Errorf("op %d %s(%v, %v): got %v, %v; want %v, %v", i, o.kind, o.mac, o.addr, got, err, o.wantAddr, o.wantErr)
				}
			}
		})
	}
}

func TestDHCPCodec(t *testing.T) {
	long := bytes.Repeat([]byte{'x'}, 600)
	m := dhcpMessage{
		Op: dhcpBootRequest, HType: 1, HLen: 6, Hops: 1, XID: 0xdeadbeef, Secs: 3, Flags: dhcpFlagBroadcast,
		CIAddr: netip.MustParseAddr("10.0.0.1"), YIAddr: netip.MustParseAddr("10.0.0.2"),
		SIAddr: netip.MustParseAddr("10.0.0.3"), GIAddr: netip.MustParseAddr("10.0.0.4"),
		CHAddr:  [16]byte{1, 2, 3, 4, 5, 6},
		Options: []dhcpOption{{Code: optMessageType, Data: []byte{1}}, {Code: optSearchDomains, Data: long}, {Code: 61, Data: []byte{}}},
	}
	b := m.encode(nil)
	got, err := decodeDHCP(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if diff := cmp.Diff(m, got, cmpNet); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}

	tests := []struct {
		name    string
		b       []byte
		wantErr bool
	}{
		{name: "short", b: b[:239], wantErr: true},
		{name: "bad magic", b: append(append([]byte{}, b[:236]...), 1, 2, 3, 4, optEnd), wantErr: true},
		{name: "truncated option", b: append(append([]byte{}, b[:240]...), optRouter, 4, 1), wantErr: true},
		{name: "no end option", b: append(append([]byte{}, b[:240]...), optPad, optMessageType, 1, 3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeDHCP(tt.b)
			if (err != nil) != tt.wantErr {
				t.Errorf("decode: err %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestEncodeSearchDomains(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []byte
		wantErr bool
	}{
		{name: "two names", in: []string{"a.example", "b."}, want: []byte("\x01a\x07example\x00\x01b\x00")},
		{name: "empty label", in: []string{"a..b"}, wantErr: true},
		{name: "empty name", in: []string{""}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := encodeSearchDomains(tt.in)
			if (err != nil) != tt.wantErr || !bytes.Equal(got, tt.want) {
				t.Errorf("encodeSearchDomains(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// FuzzDHCP decodes arbitrary bytes; whatever decodes must encode and
// decode again to the same message.
func FuzzDHCP(f *testing.F) {
	m := dhcpMessage{Op: 1, HType: 1, HLen: 6, XID: 1, CIAddr: netip.IPv4Unspecified(), YIAddr: netip.IPv4Unspecified(),
		SIAddr: netip.IPv4Unspecified(), GIAddr: netip.IPv4Unspecified()}
	m.addOption(optMessageType, []byte{byte(dhcpDiscover)})
	m.addOption(optRequestedIP, []byte{10, 0, 0, 5})
	f.Add(m.encode(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeDHCP(b)
		if err != nil {
			return
		}
		m.msgType()
		m.mac()
		m.addrOption(optRequestedIP)
		again, err := decodeDHCP(m.encode(nil))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if diff := cmp.Diff(m, again, cmpNet); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
