package vswitch

import (
	"encoding/binary"
	"net/netip"
)

// Ethernet and ARP layout used by the policy checks.
const (
	ethHdrLen = 14

	etherTypeIPv4  = 0x0800
	etherTypeARP   = 0x0806
	etherTypeIPv6  = 0x86dd
	etherTypeVLAN  = 0x8100
	etherTypeQinQ  = 0x88a8
	etherTypeQinQ1 = 0x9100 // pre-standard double tagging

	arpLen      = 28
	arpSHAOff   = 8  // sender hardware address, within the ARP packet
	arpSPAOff   = 14 // sender protocol address
	ipv4SrcOff  = 12
	ipv4MinSize = 20
)

// reaches is the inter-container communication policy of step 6 (see
// forward.go): it reports whether a frame entering a may leave through d.
// With ICC on everything may; with it off (Docker's enable_icc=false)
// only frames from or to a Gateway port may, so endpoints reach the
// gateway and the gateway reaches them, but endpoints never reach each
// other, by unicast or by flooding.
func (a *Attachment) reaches(d *Attachment, icc bool) bool {
	return icc || a.cfg.Gateway || d.cfg.Gateway
}

// verdict is the outcome of the anti-spoofing check.
type verdict uint8

const (
	verdictPass      verdict = iota
	verdictSpoof             // counted as DropSpoof
	verdictMalformed         // too short to check: DropMalformed
)

// admit is step 4 of the packet path (see forward.go): the anti-spoofing
// check of a frame d entering a port bound to b. d holds at least an
// Ethernet header.
//
// VLAN-tagged frames are refused: the tag would hide the ARP or IPv4
// header from this check, and a bound guest has no business tagging.
// IPv6 is not bound (a guest picks its own link-local and SLAAC
// addresses); its frames are checked only for the source MAC.
func (b *Binding) admit(d []byte) verdict {
	if MAC(d[6:12]) != b.MAC {
		return verdictSpoof
	}
	switch binary.BigEndian.Uint16(d[12:14]) {
	case etherTypeVLAN, etherTypeQinQ, etherTypeQinQ1:
		return verdictSpoof
	case etherTypeARP:
		if len(d) < ethHdrLen+arpLen {
			return verdictMalformed
		}
		arp := d[ethHdrLen:]
		if MAC(arp[arpSHAOff:arpSHAOff+6]) != b.MAC {
			return verdictSpoof
		}
		if !b.allows(arp[arpSPAOff : arpSPAOff+4]) {
			return verdictSpoof
		}
	case etherTypeIPv4:
		if len(d) < ethHdrLen+ipv4MinSize {
			return verdictMalformed
		}
		if !b.allows(d[ethHdrLen+ipv4SrcOff : ethHdrLen+ipv4SrcOff+4]) {
			return verdictSpoof
		}
	}
	return verdictPass
}

// allows reports whether a guest bound to b may use the IPv4 address in
// a4 as a source: its own address, 0.0.0.0 (DHCP DISCOVER, ARP probes),
// or any address when b binds none.
func (b *Binding) allows(a4 []byte) bool {
	addr := netip.AddrFrom4([4]byte(a4))
	return !b.IPv4.IsValid() || addr == b.IPv4 || addr.IsUnspecified()
}
