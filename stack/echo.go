package stack

// ICMPv4 echo requests to addresses the gateway does not own are taken
// off the receive path before netstack and handed to the EchoHandler,
// which pings the real destination and answers with Echo.Reply. Netstack
// only ever answers pings to the gateway's own address: a reply for any
// other address must come from the real host, never be made up.

import (
	"net/netip"
	"slices"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	vswitch "github.com/usernet/usernet/switch"
)

// EchoHandler receives ICMPv4 echo requests to addresses the gateway does
// not own.
type EchoHandler interface {
	// HandleEcho is called on the gateway's receive path, so it must not
	// block: send the request on and return, and call e.Reply later, from
	// any goroutine, when the answer comes. A request it never replies to
	// is a lost ping.
	HandleEcho(e *Echo)
}

// Echo is an ICMPv4 echo request from a guest (Src) to a foreign address
// (Dst). The handler owns it and its Payload.
type Echo struct {
	Src, Dst netip.Addr
	ID, Seq  uint16
	TTL      uint8
	Payload  []byte

	g      *Gateway
	srcMAC vswitch.MAC
}

// echoTTL is the TTL of echo replies the gateway makes up for remote hosts.
const echoTTL = 64

// ipID numbers the IPv4 packets the gateway builds itself.
var ipID atomic.Uint32

// Reply sends an echo reply from Dst to Src with the request's ID and Seq
// and the given payload (normally the request's), to the MAC the request
// came from. A reply larger than the network's MTU is dropped. Safe for
// concurrent use; it may be called more than once (each call is a reply).
func (e *Echo) Reply(payload []byte) {
	g := e.g
	ipLen := header.IPv4MinimumSize + header.ICMPv4MinimumSize + len(payload)
	if ipLen > g.cfg.MTU {
		g.stats.echoDropped.Add(1)
		return
	}
	f := vswitch.NewFrame(header.EthernetMinimumSize + ipLen)
	ethernetFrame(f.Data, e.srcMAC, g.mac)
	ip := header.IPv4(f.Data[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(ipLen),
		ID:          uint16(ipID.Add(1)),
		TTL:         echoTTL,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     toTCPIP(e.Dst),
		DstAddr:     toTCPIP(e.Src),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(ip[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4EchoReply)
	icmp.SetCode(0)
	icmp.SetIdent(e.ID)
	icmp.SetSequence(e.Seq)
	copy(icmp[header.ICMPv4MinimumSize:], payload)
	icmp.SetChecksum(0)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	g.inject(f)
}

// interceptICMP takes ICMPv4 packets to a foreign destination off the
// receive path. It reports false for those netstack should still see:
// ICMP errors (a guest's port unreachable for a flow netstack forwards).
func (g *Gateway) interceptICMP(srcMAC vswitch.MAC, ip header.IPv4) bool {
	if ip.More() || ip.FragmentOffset() != 0 {
		// The handler gets only whole requests; reassembling pings
		// for remote hosts is not worth a fragment cache.
		g.stats.echoDropped.Add(1)
		return true
	}
	icmp := header.ICMPv4(ip.Payload())
	if len(icmp) < header.ICMPv4MinimumSize {
		g.stats.echoDropped.Add(1)
		return true
	}
	switch icmp.Type() {
	case header.ICMPv4Echo:
	case header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		return false
	default:
		g.stats.echoDropped.Add(1)
		return true
	}
	dst := fromTCPIP(ip.DestinationAddress())
	unicast := (dst.IsGlobalUnicast() || dst.IsLoopback()) && dst != g.broadcast()
	if g.cfg.Echo == nil || !unicast {
		g.stats.echoDropped.Add(1)
		return true
	}
	g.stats.echoHandled.Add(1)
	g.cfg.Echo.HandleEcho(&Echo{
		Src:     fromTCPIP(ip.SourceAddress()),
		Dst:     dst,
		ID:      icmp.Ident(),
		Seq:     icmp.Sequence(),
		TTL:     ip.TTL(),
		Payload: slices.Clone(icmp[header.ICMPv4MinimumSize:]),
		g:       g,
		srcMAC:  srcMAC,
	})
	return true
}

// broadcast returns the network's directed broadcast address.
func (g *Gateway) broadcast() netip.Addr {
	a := g.prefix.Addr().As4()
	bits := g.prefix.Bits()
	for i := range a {
		for b := 0; b < 8; b++ {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	return netip.AddrFrom4(a)
}
