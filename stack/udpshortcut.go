package stack

// UDP flows past netstack. Once a UDPConn's owner reads it with OnDatagram
// (NAT flows, published UDP ports), its IPv4 datagrams skip gVisor both
// ways, as echo requests already do (echo.go):
//
//   - In: receive looks each unicast IPv4 UDP frame up by its addresses
//     and ports. A frame for a registered conn goes straight to the conn's
//     function with the UDP payload, and the sender's MAC is noted as the
//     conn's peer.
//   - Out: once the peer's MAC is known, Write and WriteNow build the
//     Ethernet, IPv4 and UDP headers themselves and send the frame into
//     the switch.
//
// Everything else stays with netstack, which remains the conn's socket:
// the first datagram of a flow (it makes the conn), fragments, frames that
// are GSO super-frames, datagrams larger than the MTU, IPv6. The headers
// are the same netstack would write, so the guest cannot tell which path a
// datagram took. On an 8b-style round trip through the daemon this takes
// gVisor's receive and send paths off the per-datagram cost
// (bench/results).

import (
	"net/netip"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	vswitch "github.com/usernet/usernet/switch"
)

// udpTTL is the TTL of datagrams the gateway sends past netstack: gVisor's
// default, so both paths look alike.
const udpTTL = 64

// shortcut is a UDPConn's part in the shortcut: where its frames go and
// what they carry. Its fields are set before the conn is registered.
type shortcut struct {
	key    flowKey4
	local  tcpip.Address // the conn's address: the source of what it sends
	remote tcpip.Address
	lport  uint16
	rport  uint16
	// peer is the MAC the peer's last frame came from, with bit 63 set
	// once there is one (0 until then): what Write needs to skip netstack.
	peer atomic.Uint64
}

const peerKnown = 1 << 63

func packMAC(m vswitch.MAC) uint64 {
	return peerKnown | uint64(m[0])<<40 | uint64(m[1])<<32 | uint64(m[2])<<24 | uint64(m[3])<<16 | uint64(m[4])<<8 | uint64(m[5])
}

func unpackMAC(v uint64) vswitch.MAC {
	return vswitch.MAC{byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// notePeer records the MAC the peer's frames come from; a guest whose MAC
// changes gets the replies at its new one, as after an ARP update.
func (s *shortcut) notePeer(m vswitch.MAC) {
	if v := packMAC(m); s.peer.Load() != v {
		s.peer.Store(v)
	}
}

// shortcutFor returns the shortcut of a conn from local to remote, which
// must both be IPv4.
func shortcutFor(local, remote netip.AddrPort) *shortcut {
	s := &shortcut{
		local: toTCPIP(local.Addr()), remote: toTCPIP(remote.Addr()),
		lport: local.Port(), rport: remote.Port(),
	}
	s.key = flowKey4{src: remote.Addr().As4(), dst: local.Addr().As4(), sport: s.rport, dport: s.lport}
	return s
}

// receiveUDP is the inbound shortcut, on the receive path (receive): it
// reports whether it took the frame. ip is valid (IsValid) and carries UDP.
func (g *Gateway) receiveUDP(f *vswitch.Frame, ip header.IPv4) bool {
	if f.Hdr.IsGSO() || ip.More() || ip.FragmentOffset() != 0 || f.Dst() != g.mac {
		return false
	}
	u := header.UDP(ip.Payload())
	if len(u) < header.UDPMinimumSize || int(u.Length()) != len(u) {
		return false // netstack drops it and counts why
	}
	k := flowKey4{
		src: ip.SourceAddress().As4(), dst: ip.DestinationAddress().As4(),
		sport: u.SourcePort(), dport: u.DestinationPort(),
	}
	c := g.udp.lookup(k)
	if c == nil {
		return false
	}
	if s := c.sc.Load(); s != nil {
		s.notePeer(f.Src())
	}
	g.stats.udpShortcutIn.Add(1)
	c.deliver(u.Payload())
	return true
}

// sendUDP is the outbound shortcut: it sends p to s's peer and reports
// whether it could (the peer's MAC is known and the datagram fits the
// MTU unfragmented); if not, the caller sends through netstack.
func (g *Gateway) sendUDP(s *shortcut, p []byte) bool {
	peer := s.peer.Load()
	ipLen := header.IPv4MinimumSize + header.UDPMinimumSize + len(p)
	if peer == 0 || ipLen > g.cfg.MTU {
		return false
	}
	f := vswitch.NewFrame(header.EthernetMinimumSize + ipLen)
	ethernetFrame(f.Data, unpackMAC(peer), g.mac)
	ip := header.IPv4(f.Data[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(ipLen),
		ID:          uint16(ipID.Add(1)),
		Flags:       header.IPv4FlagDontFragment, // as netstack's PMTU discovery default sets it
		TTL:         udpTTL,
		Protocol:    uint8(header.UDPProtocolNumber),
		SrcAddr:     s.local,
		DstAddr:     s.remote,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(ip[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{
		SrcPort: s.lport,
		DstPort: s.rport,
		Length:  uint16(header.UDPMinimumSize + len(p)),
	})
	copy(u[header.UDPMinimumSize:], p)
	sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, s.local, s.remote, u.Length())
	// A computed 0 is sent as all ones: 0 means "no checksum" (RFC 768).
	if sum = checksum.Checksum(u, sum); sum != 0xffff {
		sum = ^sum
	}
	u.SetChecksum(sum)
	g.stats.udpShortcutOut.Add(1)
	g.inject(f)
	return true
}
