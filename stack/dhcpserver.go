package stack

// The gateway's DHCPv4 server. Requests are taken off the receive path
// before netstack (link.go, receive) and replies are built here and sent
// straight into the switch, because a client without an address can be
// reached only by broadcast or by its MAC, neither of which a gVisor UDP
// socket would do for us.
//
//  1. handleDHCP: checks the UDP datagram and decodes the message (dhcp.go).
//  2. dhcpServer.handle: the protocol (RFC 2131 section 4.3) against the
//     lease table (leases.go).
//  3. sendDHCP: addresses the reply as RFC 2131 section 4.1 says and
//     injects it.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	vswitch "github.com/usernet/usernet/switch"
)

// DHCPConfig configures the gateway's DHCPv4 server. Zero values of the
// optional fields mean the defaults noted.
type DHCPConfig struct {
	// Start and End bound the addresses leased out (inclusive); both must
	// lie in the network's prefix. The gateway's own, the network and the
	// broadcast addresses are never leased.
	Start, End netip.Addr
	// Router is the default gateway clients are told; zero means the
	// gateway's address.
	Router netip.Addr
	// DNS are the name servers clients are told (option 6); none means
	// the option is left out.
	DNS []netip.Addr
	// MTU is the interface MTU clients are told (option 26); 0 means the
	// network's MTU.
	MTU int
	// SearchDomains are the DNS search domains (option 119).
	SearchDomains []string
	// LeaseTime is how long a lease lasts; 0 means one hour.
	LeaseTime time.Duration
	// Reserved, if set, reports addresses that are never leased (addresses
	// the engine assigned statically, for example). It is called with the
	// server's lock held and must not call back into the gateway.
	Reserved func(netip.Addr) bool
}

// dhcpOfferTime is how long an offered address is held for the client's
// REQUEST.
const dhcpOfferTime = time.Minute

// dhcpServer serves one network. Its lock guards the lease table; it is
// taken on the gateway's receive path and by Gateway.Leases.
type dhcpServer struct {
	g         *Gateway
	leaseTime time.Duration
	options   []dhcpOption // network options for OFFER and ACK

	mu     sync.Mutex
	leases *leaseTable
}

func newDHCPServer(g *Gateway, cfg DHCPConfig) (*dhcpServer, error) {
	if !cfg.Start.Is4() || !cfg.End.Is4() || !g.prefix.Contains(cfg.Start) || !g.prefix.Contains(cfg.End) || cfg.End.Less(cfg.Start) {
		return nil, fmt.Errorf("dhcp: range %v-%v: want IPv4 start <= end inside %v", cfg.Start, cfg.End, g.prefix)
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.MTU == 0 {
		cfg.MTU = g.cfg.MTU
	}
	if !cfg.Router.IsValid() {
		cfg.Router = g.addr
	}
	if !cfg.Router.Is4() {
		return nil, fmt.Errorf("dhcp: router %v: want an IPv4 address", cfg.Router)
	}
	maskBytes := make([]byte, 4)
	binary.BigEndian.PutUint32(maskBytes, ^uint32(0)<<(32-g.prefix.Bits()))
	router := cfg.Router.As4()
	opts := []dhcpOption{
		{Code: optSubnetMask, Data: maskBytes},
		{Code: optRouter, Data: router[:]},
	}
	if len(cfg.DNS) > 0 {
		var dns []byte
		for _, a := range cfg.DNS {
			if !a.Is4() {
				return nil, fmt.Errorf("dhcp: DNS server %v: want an IPv4 address", a)
			}
			a4 := a.As4()
			dns = append(dns, a4[:]...)
		}
		opts = append(opts, dhcpOption{Code: optDNS, Data: dns})
	}
	if cfg.MTU < 68 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("dhcp: MTU %d out of range 68-65535", cfg.MTU)
	}
	opts = append(opts, dhcpOption{Code: optMTU, Data: binary.BigEndian.AppendUint16(nil, uint16(cfg.MTU))})
	if len(cfg.SearchDomains) > 0 {
		search, err := encodeSearchDomains(cfg.SearchDomains)
		if err != nil {
			return nil, fmt.Errorf("dhcp: %w", err)
		}
		opts = append(opts, dhcpOption{Code: optSearchDomains, Data: search})
	}
	network, broadcast := g.prefix.Addr(), g.broadcast()
	excluded := func(a netip.Addr) bool {
		return a == g.addr || a == network || a == broadcast || cfg.Reserved != nil && cfg.Reserved(a)
	}
	return &dhcpServer{
		g:         g,
		leaseTime: cfg.LeaseTime,
		options:   opts,
		leases:    newLeaseTable(cfg.Start, cfg.End, excluded, cfg.LeaseTime, dhcpOfferTime),
	}, nil
}

// isDHCPRequest reports whether ip carries a datagram for a DHCP server
// that the gateway should answer: UDP to port 67 of the gateway or the
// limited broadcast address.
func (g *Gateway) isDHCPRequest(ip header.IPv4) bool {
	udp := header.UDP(ip.Payload())
	if len(udp) < header.UDPMinimumSize || udp.DestinationPort() != dhcpServerPort {
		return false
	}
	dst := ip.DestinationAddress()
	return dst == header.IPv4Broadcast || g.ownsV4(dst)
}

// handleDHCP is step 1.
func (g *Gateway) handleDHCP(ip header.IPv4, at time.Time) {
	if g.dhcp == nil {
		g.stats.dhcpDropped.Add(1)
		return
	}
	udp := header.UDP(ip.Payload())
	n := int(udp.Length())
	if n < header.UDPMinimumSize || n > len(udp) {
		g.stats.dhcpDropped.Add(1)
		return
	}
	req, err := decodeDHCP(udp[header.UDPMinimumSize:n])
	if err != nil {
		g.stats.dhcpDropped.Add(1)
		return
	}
	reply, ok := g.dhcp.handle(&req, at)
	if !ok {
		return
	}
	g.sendDHCP(&req, &reply)
}

// handle is step 2: it returns the reply to req, if any.
func (s *dhcpServer) handle(req *dhcpMessage, at time.Time) (dhcpMessage, bool) {
	mac, ok := req.mac()
	if req.Op != dhcpBootRequest || !ok || !req.GIAddr.IsUnspecified() {
		// Not an Ethernet client talking to us directly (relays are not
		// supported: the server sits on the client's own link).
		s.g.stats.dhcpDropped.Add(1)
		return dhcpMessage{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.msgType() {
	case dhcpDiscover:
		a, err := s.leases.offer(mac, req.addrOption(optRequestedIP), at)
		if err != nil {
			s.g.logger.Warn("dhcp: no address to offer", "mac", mac, "err", err)
			s.g.stats.dhcpDropped.Add(1)
			return dhcpMessage{}, false
		}
		return s.reply(req, dhcpOffer, a), true
	case dhcpRequest:
		if sid := req.addrOption(optServerID); sid.IsValid() && sid != s.g.addr {
			// The client chose another server's offer; ours lapses.
			return dhcpMessage{}, false
		}
		a := req.addrOption(optRequestedIP) // SELECTING, INIT-REBOOT
		if !a.IsValid() {
			a = req.CIAddr // RENEWING, REBINDING
		}
		if a.IsUnspecified() {
			s.g.stats.dhcpDropped.Add(1)
			return dhcpMessage{}, false
		}
		if _, err := s.leases.bind(mac, a, at); err != nil {
			s.g.logger.Info("dhcp: refusing request", "mac", mac, "addr", a, "err", err)
			return s.nak(req), true
		}
		s.g.logger.Debug("dhcp: lease", "mac", mac, "addr", a)
		return s.reply(req, dhcpAck, a), true
	case dhcpDecline:
		_ = s.leases.decline(mac, req.addrOption(optRequestedIP), at)
		s.g.logger.Warn("dhcp: client declined address", "mac", mac, "addr", req.addrOption(optRequestedIP))
	case dhcpRelease:
		_ = s.leases.release(mac, req.CIAddr, at)
	case dhcpInform:
		return s.reply(req, dhcpAck, netip.Addr{}), true
	default:
		s.g.stats.dhcpDropped.Add(1)
	}
	return dhcpMessage{}, false
}

// reply builds an OFFER or ACK giving yiaddr (zero for the ACK to an
// INFORM, which carries no lease).
func (s *dhcpServer) reply(req *dhcpMessage, typ dhcpMsgType, yiaddr netip.Addr) dhcpMessage {
	r := s.header(req, typ)
	if typ == dhcpAck {
		r.CIAddr = req.CIAddr
	}
	if yiaddr.IsValid() {
		r.YIAddr = yiaddr
		secs := uint32(s.leaseTime / time.Second)
		r.addOption(optLeaseTime, binary.BigEndian.AppendUint32(nil, secs))
		r.addOption(optRenewalTime, binary.BigEndian.AppendUint32(nil, secs/2))
		r.addOption(optRebindingTime, binary.BigEndian.AppendUint32(nil, secs/8*7))
	}
	r.Options = append(r.Options, s.options...)
	return r
}

// nak builds a NAK for req.
func (s *dhcpServer) nak(req *dhcpMessage) dhcpMessage {
	r := s.header(req, dhcpNak)
	r.addOption(optMessage, []byte("requested address not available"))
	return r
}

// header starts a reply to req of type typ from this server.
func (s *dhcpServer) header(req *dhcpMessage, typ dhcpMsgType) dhcpMessage {
	sid := s.g.addr.As4()
	r := dhcpMessage{
		Op:     dhcpBootReply,
		HType:  req.HType,
		HLen:   req.HLen,
		XID:    req.XID,
		Flags:  req.Flags,
		CIAddr: netip.IPv4Unspecified(),
		YIAddr: netip.IPv4Unspecified(),
		SIAddr: netip.IPv4Unspecified(),
		GIAddr: req.GIAddr,
		CHAddr: req.CHAddr,
	}
	r.addOption(optMessageType, []byte{byte(typ)})
	r.addOption(optServerID, sid[:])
	return r
}

// sendDHCP is step 3. A NAK, or a reply to a client that asked for
// broadcast, goes to 255.255.255.255 and ff:ff:ff:ff:ff:ff; a reply to a
// client that has an address (ciaddr) goes to that address; otherwise it
// goes to the offered address at the client's MAC, which works before the
// client has configured it because no ARP is involved.
func (g *Gateway) sendDHCP(req, reply *dhcpMessage) {
	mac, _ := req.mac()
	dstIP, dstMAC := netip.IPv4Unspecified(), vswitch.Broadcast
	switch {
	case reply.msgType() == dhcpNak:
	case !req.CIAddr.IsUnspecified():
		dstIP, dstMAC = req.CIAddr, mac
	case req.Flags&dhcpFlagBroadcast != 0:
	default:
		dstIP, dstMAC = reply.YIAddr, mac
	}
	if dstIP.IsUnspecified() {
		dstIP = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}

	payload := reply.encode(nil)
	udpLen := header.UDPMinimumSize + len(payload)
	ipLen := header.IPv4MinimumSize + udpLen
	f := vswitch.NewFrame(header.EthernetMinimumSize + ipLen)
	ethernetFrame(f.Data, dstMAC, g.mac)
	ip := header.IPv4(f.Data[header.EthernetMinimumSize:])
	src, dst := g.tcpipAddr, toTCPIP(dstIP)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(ipLen),
		ID:          uint16(ipID.Add(1)),
		TTL:         64,
		Protocol:    uint8(header.UDPProtocolNumber),
		SrcAddr:     src,
		DstAddr:     dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	udp := header.UDP(ip[header.IPv4MinimumSize:])
	udp.Encode(&header.UDPFields{SrcPort: dhcpServerPort, DstPort: dhcpClientPort, Length: uint16(udpLen)})
	copy(udp[header.UDPMinimumSize:], payload)
	sum := ^checksum.Checksum(udp, header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(udpLen)))
	if sum == 0 {
		sum = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	udp.SetChecksum(sum)
	g.stats.dhcpReplies.Add(1)
	g.inject(f)
}

// Leases returns the DHCP leases bound and unexpired now, by address; nil
// without a DHCP server.
func (g *Gateway) Leases() []Lease {
	if g.dhcp == nil {
		return nil
	}
	g.dhcp.mu.Lock()
	defer g.dhcp.mu.Unlock()
	return g.dhcp.leases.leases(g.now())
}
