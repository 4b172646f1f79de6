package stack

// The gateway's NIC: a gVisor link endpoint on one side and a switch port
// on the other, exchanging whole Ethernet frames with their virtio-net
// offload metadata.
//
// Inbound, switch -> netstack (the gateway port's writer goroutine):
//  1. port.WriteFrames takes a batch the switch queued for the gateway.
//  2. receive looks at each frame: unicast frames for other MACs (flooded
//     by the switch before it learned the destination) are dropped;
//     ICMPv4 echo requests to addresses the gateway does not own go to
//     the EchoHandler (echo.go), DHCP requests to the DHCP server
//     (dhcpserver.go) and datagrams of UDP flows that skip netstack to
//     their conns (udpshortcut.go) instead of netstack; everything else
//     is delivered.
//  3. deliver copies the frame into a PacketBuffer (one packet even for a
//     64 KiB TSO super-frame; the partial checksum a TAP hands us is
//     trusted, CapabilityRXChecksumOffload) and calls the NIC's
//     DeliverNetworkPacket.
//
// Outbound, netstack -> switch (whichever gVisor goroutine sends):
//  4. endpoint.WritePackets turns each packet into a Frame, mapping
//     pkt.GSOOptions onto the virtio-net header as fdbased does for
//     sockets, so gVisor's 64 KiB TCP segments leave whole (HostGSO).
//     TCP segments with payload become scatter frames over the packet's
//     views (no copy); other packets are copied.
//  5. filter drops ARP replies and NDP neighbour advertisements for
//     addresses the gateway does not own: with spoofing on, netstack would
//     answer for every address on the network (NETSTACK.md R7).
//  6. The batch goes to Attachment.Input; the gateway port is attached
//     with Block, so a full destination queue slows netstack down rather
//     than dropping its segments.

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	vswitch "github.com/usernet/usernet/switch"
)

// gsoMaxSize is the largest TCP segment gVisor may hand the endpoint: a
// whole 64 KiB TSO super-frame, like a TAP takes (NETSTACK.md R1).
const gsoMaxSize = 1 << 16

// rxHeaderView is the size of the first view of a received packet. It covers
// Ethernet + IPv4 (with options) + TCP (with options), 134 bytes at most, and
// Ethernet + IPv6 + TCP without extension headers, so gVisor's header
// parsing never has to merge it with the payload view behind it.
const rxHeaderView = 256

// port is the switch side of the gateway NIC. It does not implement
// vswitch.Reader: netstack pushes its frames with Attachment.Input.
type port struct {
	g *Gateway
}

var _ vswitch.Port = (*port)(nil)

// WriteFrames is step 1: frames the switch sends to the gateway.
func (p *port) WriteFrames(frames []*vswitch.Frame) error {
	for _, f := range frames {
		p.g.receive(f)
	}
	return nil
}

// Close is called by Detach; the gateway keeps running unattached (its
// outbound frames are dropped and counted) until Gateway.Close.
func (p *port) Close() error {
	p.g.ep.att.Store(nil)
	return nil
}

// receive is step 2.
func (g *Gateway) receive(f *vswitch.Frame) {
	d := f.Data
	if len(d) < header.EthernetMinimumSize {
		g.stats.dropMalformed.Add(1)
		return
	}
	if dst := f.Dst(); dst != g.mac && !dst.IsMulticast() {
		// Unknown unicast the switch flooded: it is another guest's, and
		// promiscuous netstack would take it for its own.
		g.stats.dropOtherHost.Add(1)
		return
	}
	if header.Ethernet(d).Type() == header.IPv4ProtocolNumber {
		ip := header.IPv4(d[header.EthernetMinimumSize:])
		if ip.IsValid(len(ip)) {
			switch ip.TransportProtocol() {
			case header.ICMPv4ProtocolNumber:
				if !g.ownsV4(ip.DestinationAddress()) && g.interceptICMP(f.Src(), ip) {
					return
				}
			case header.UDPProtocolNumber:
				if g.isDHCPRequest(ip) {
					g.handleDHCP(ip, g.now())
					return
				}
				if g.receiveUDP(f, ip) {
					return
				}
			case header.TCPProtocolNumber:
				if g.cfg.TranslateTCP && g.receiveTCP(f, ip) {
					return
				}
			}
		}
	}
	g.deliver(d)
}

// deliver is step 3.
func (g *Gateway) deliver(d []byte) {
	disp := g.ep.dispatcher()
	if disp == nil {
		return
	}
	// Chunks up to buffer.MaxChunkSize are pooled; a super-frame is a
	// little larger (64 KiB plus the Ethernet header), so split it rather
	// than let gVisor allocate one from the heap.
	// The headers get a small view of their own. ipv4's HandlePacket
	// re-slices the network header while still holding a view of it, and
	// buffer.PullUp clones the whole chunk under a shared view; with the
	// headers alone in a rxHeaderView-byte chunk that clone is a few hundred
	// bytes instead of up to 64 KiB per super-frame (fdbased's 128-byte
	// first view does the same).
	var payload buffer.Buffer
	h := min(len(d), rxHeaderView)
	payload.Append(buffer.NewViewWithData(d[:h]))
	d = d[h:]
	for len(d) > 0 {
		n := min(len(d), buffer.MaxChunkSize)
		payload.Append(buffer.NewViewWithData(d[:n]))
		d = d[n:]
	}
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: payload})
	defer pkt.DecRef()
	hdr, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return
	}
	eth := header.Ethernet(hdr)
	switch dst := eth.DestinationAddress(); {
	case dst == header.EthernetBroadcastAddress:
		pkt.PktType = tcpip.PacketBroadcast
	case header.IsMulticastEthernetAddress(dst):
		pkt.PktType = tcpip.PacketMulticast
	default:
		pkt.PktType = tcpip.PacketHost
	}
	disp.DeliverNetworkPacket(eth.Type(), pkt)
}

// endpoint is the gVisor side of the gateway NIC. It writes the Ethernet
// header itself (rather than being wrapped by link/ethernet) because the
// filter in step 5 and the injected replies work on whole frames anyway.
type endpoint struct {
	g   *Gateway
	mac tcpip.LinkAddress
	mtu atomic.Uint32

	// att is the switch attachment, nil while the gateway is not attached.
	att atomic.Pointer[vswitch.Attachment]

	// acks holds pure ACKs back for a moment (ackdelay.go).
	acks *ackHolder

	mu      sync.RWMutex
	disp    gstack.NetworkDispatcher
	onClose func()
}

var (
	_ gstack.LinkEndpoint = (*endpoint)(nil)
	_ gstack.GSOEndpoint  = (*endpoint)(nil)
)

// WritePackets is step 4. Packets that carry TCP payload leave as
// scatter frames over the packet's own views, holding a reference to the
// packet until the switch is done with them, so that a TAP writes them
// with one writev and no copy; the rest (ARP, NDP, ICMP, pure ACKs) are
// copied, so that filter sees them whole and may rewrite them. TCP
// segments then pass the ACK holder (ackdelay.go), which may keep a pure
// ACK back or drop one it held.
func (e *endpoint) WritePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	list := pkts.AsSlice()
	att := e.att.Load()
	if att == nil {
		e.g.stats.dropNotAttached.Add(uint64(len(list)))
		return len(list), nil
	}
	var batch [16]*vswitch.Frame
	frames := batch[:0]
	for _, pkt := range list {
		f := scatterFromPacket(pkt)
		scatter := f != nil
		if !scatter {
			f = frameFromPacket(pkt)
			if !e.g.filter(f) {
				f.DecRef()
				continue
			}
		}
		// A scatter frame carries payload, so with nothing held the
		// holder would pass it straight on: skip parsing it.
		if scatter && e.acks.n.Load() == 0 {
			frames = append(frames, f)
		} else if seg, ok := classify(pkt); ok {
			frames = e.acks.admit(seg, f, frames)
		} else {
			frames = append(frames, f)
		}
		// admit may add two frames.
		if len(frames) >= cap(frames)-1 {
			att.Input(frames)
			frames = frames[:0]
		}
	}
	if len(frames) > 0 {
		att.Input(frames)
	}
	return len(list), nil
}

// maxScatterSlices bounds the views of a packet sent as a scatter frame:
// a segment merged from many small writes can have hundreds, beyond what
// one writev takes (1024 iovecs), and copying it costs less than gathering.
const maxScatterSlices = 64

// scatterFromPacket returns a scatter frame over pkt's views, with a new
// reference to pkt (a *PacketBuffer is the frame's vswitch.Owner), if pkt is a TCP segment with payload whose headers
// (link, network and transport) all lie in its first view, where the
// switch reads them; otherwise nil. filter has nothing to say about TCP,
// so such a frame skips it.
func scatterFromPacket(pkt *gstack.PacketBuffer) *vswitch.Frame {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber || pkt.Data().Size() == 0 {
		return nil
	}
	vl, off := pkt.AsViewList()
	first := vl.Front()
	for first != nil && off >= first.Size() {
		off -= first.Size()
		first = first.Next()
	}
	if first == nil || first.Size()-off < pkt.HeaderSize() {
		return nil
	}
	n := 0
	for v := first; v != nil; v = v.Next() {
		if n++; n > maxScatterSlices {
			return nil
		}
	}
	f := vswitch.NewScatterFrame(pkt.IncRef())
	for v := first; v != nil; v = v.Next() {
		b := v.AsSlice()[off:]
		off = 0
		if len(b) > 0 {
			f.AppendSlice(b)
		}
	}
	setOffloads(f, pkt)
	return f
}

// frameFromPacket copies an outbound packet (link header included) into a
// new Frame and maps its offloads onto the virtio-net header (setOffloads).
func frameFromPacket(pkt *gstack.PacketBuffer) *vswitch.Frame {
	f := vswitch.NewFrame(pkt.Size())
	vl, off := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(f.Data[n:], b[off:])
		off = 0
	}
	f.Resize(n)
	setOffloads(f, pkt)
	return f
}

// setOffloads maps pkt's GSO options onto f's virtio-net header:
// NEEDS_CSUM with the checksum location for every packet gVisor left a
// partial checksum in, and TCPv4/TCPv6 TSO with the MSS as segment size
// when the payload is larger than one segment.
func setOffloads(f *vswitch.Frame, pkt *gstack.PacketBuffer) {
	gso := pkt.GSOOptions
	if gso.Type == gstack.GSONone {
		return
	}
	f.Hdr.HdrLen = uint16(pkt.HeaderSize())
	if gso.NeedsCsum {
		f.Hdr.Flags = vswitch.VnetFlagNeedsCsum
		f.Hdr.CsumStart = header.EthernetMinimumSize + gso.L3HdrLen
		f.Hdr.CsumOffset = gso.CsumOffset
	}
	if pkt.Data().Size() > int(gso.MSS) {
		switch gso.Type {
		case gstack.GSOTCPv4:
			f.Hdr.GSOType = vswitch.GSOTCPv4
		case gstack.GSOTCPv6:
			f.Hdr.GSOType = vswitch.GSOTCPv6
		}
		if f.Hdr.GSOType != vswitch.GSONone {
			f.Hdr.GSOSize = gso.MSS
		}
	}
}

// filter is step 5. It reports whether f may leave. It also rewrites the
// sender address of ARP requests that netstack sends from a spoofed
// address (a published port dialling from a client's IP) to the gateway's
// own, so guests never learn a foreign address at the gateway's MAC.
func (g *Gateway) filter(f *vswitch.Frame) bool {
	d := f.Data
	if len(d) < header.EthernetMinimumSize {
		return true
	}
	switch header.Ethernet(d).Type() {
	case header.ARPProtocolNumber:
		arp := header.ARP(d[header.EthernetMinimumSize:])
		if !arp.IsValid() {
			return true
		}
		sender := tcpip.AddrFrom4Slice(arp.ProtocolAddressSender())
		if g.ownsV4(sender) {
			return true
		}
		switch arp.Op() {
		case header.ARPReply:
			g.stats.dropForeignARP.Add(1)
			return false
		case header.ARPRequest:
			a4 := g.addr.As4()
			copy(arp.ProtocolAddressSender(), a4[:])
		}
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(d[header.EthernetMinimumSize:])
		if !ip.IsValid(len(ip)) || ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
			return true
		}
		icmp := header.ICMPv6(ip.Payload())
		if len(icmp) < header.ICMPv6NeighborAdvertMinimumSize || icmp.Type() != header.ICMPv6NeighborAdvert {
			return true
		}
		target := header.NDPNeighborAdvert(icmp.MessageBody()).TargetAddress()
		if !g.owns(target) {
			g.stats.dropForeignNA.Add(1)
			return false
		}
	}
	return true
}

// ownsV4 reports whether a is the gateway's IPv4 address. It is the
// per-packet check; owns covers every address on the NIC.
func (g *Gateway) ownsV4(a tcpip.Address) bool {
	return a == g.tcpipAddr
}

// owns reports whether a is assigned to the gateway's NIC. It is not on
// the per-packet path: neighbour advertisements are rare.
func (g *Gateway) owns(a tcpip.Address) bool {
	for _, pa := range g.stack.AllAddresses()[nicID] {
		if pa.AddressWithPrefix.Address == a {
			return true
		}
	}
	return false
}

// inject sends a frame built by the gateway itself (echo and DHCP
// replies) into the switch; it takes over f's reference.
func (g *Gateway) inject(f *vswitch.Frame) {
	g.sendFrames([]*vswitch.Frame{f})
}

// sendFrames sends frames into the switch, taking over their references;
// it is how frames that do not come straight from WritePackets (injected
// replies, delayed ACKs) leave.
func (g *Gateway) sendFrames(frames []*vswitch.Frame) {
	att := g.ep.att.Load()
	if att == nil {
		g.stats.dropNotAttached.Add(uint64(len(frames)))
		for _, f := range frames {
			f.DecRef()
		}
		return
	}
	att.Input(frames)
}

// MTU implements gstack.LinkEndpoint: the network's MTU (IP packet size).
func (e *endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements gstack.LinkEndpoint.
func (e *endpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements gstack.LinkEndpoint: the Ethernet header.
func (*endpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements gstack.LinkEndpoint.
func (e *endpoint) LinkAddress() tcpip.LinkAddress { return e.mac }

// SetLinkAddress implements gstack.LinkEndpoint; the gateway's MAC is
// fixed at creation, so it is ignored.
func (*endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements gstack.LinkEndpoint. TX checksum offload is
// deliberately absent: with it gVisor would send non-GSO packets with no
// checksum at all, which a guest without offloads would drop.
func (*endpoint) Capabilities() gstack.LinkEndpointCapabilities {
	return gstack.CapabilityResolutionRequired | gstack.CapabilityRXChecksumOffload
}

// Attach implements gstack.LinkEndpoint.
func (e *endpoint) Attach(d gstack.NetworkDispatcher) {
	e.mu.Lock()
	e.disp = d
	e.mu.Unlock()
}

func (e *endpoint) dispatcher() gstack.NetworkDispatcher {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.disp
}

// IsAttached implements gstack.LinkEndpoint.
func (e *endpoint) IsAttached() bool { return e.dispatcher() != nil }

// Wait implements gstack.LinkEndpoint; the endpoint has no goroutines.
func (*endpoint) Wait() {}

// ARPHardwareType implements gstack.LinkEndpoint.
func (*endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements gstack.LinkEndpoint: it pushes the Ethernet header.
func (*endpoint) AddHeader(pkt *gstack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements gstack.LinkEndpoint.
func (*endpoint) ParseHeader(pkt *gstack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// Close implements gstack.LinkEndpoint; gVisor calls it when the NIC is
// removed (stack teardown).
func (e *endpoint) Close() {
	e.mu.Lock()
	f := e.onClose
	e.onClose = nil
	e.mu.Unlock()
	if f != nil {
		f()
	}
}

// SetOnCloseAction implements gstack.LinkEndpoint.
func (e *endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	e.onClose = f
	e.mu.Unlock()
}

// GSOMaxSize implements gstack.GSOEndpoint.
func (*endpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements gstack.GSOEndpoint: the switch carries the
// virtio-net header to TAPs that segment in the kernel, and segments in
// software for ports without offloads.
func (*endpoint) SupportedGSO() gstack.SupportedGSO { return gstack.HostGSOSupported }

// ethernetFrame writes an Ethernet header for an IPv4 packet into b.
func ethernetFrame(b []byte, dst, src vswitch.MAC) {
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], uint16(header.IPv4ProtocolNumber))
}
