package vswitch

import (
	"bytes"

	"encoding/binary"
	"github.com/google/go-cmp/cmp"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Tiny packet builders and checkers for the tests in this package.

var (
	macA = MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x0a}
	macB = MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x0b}
	macC = MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x0c}
	macG = MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x01}
	macX = MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0xee} // never sends: always unknown

	ipA  = netip.MustParseAddr("172.17.0.10")
	ipB  = netip.MustParseAddr("172.17.0.11")
	ip6A = netip.MustParseAddr("fd00::a")
	ip6B = netip.MustParseAddr("fd00::b")
)

// netipPair is a source and destination address.
type netipPair struct{ a, b netip.Addr }

var (
	v4Pair = netipPair{ipA, ipB}
	v6Pair = netipPair{ip6A, ip6B}
)

// eth returns an Ethernet frame.
func eth(dst, src MAC, etherType uint16, payload []byte) []byte {
	b := make([]byte, ethHdrLen+len(payload))
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], etherType)
	copy(b[ethHdrLen:], payload)
	return b
}

// arp returns an ARP request payload (Ethernet/IPv4).
func arp(sha MAC, spa netip.Addr, tpa netip.Addr) []byte {
	b := make([]byte, arpLen)
	binary.BigEndian.PutUint16(b[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], 1) // request
	copy(b[arpSHAOff:], sha[:])
	s4, t4 := spa.As4(), tpa.As4()
	copy(b[arpSPAOff:], s4[:])
	copy(b[24:], t4[:])
	return b
}

// ipv4 returns an IPv4 packet with a valid header checksum.
func ipv4(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		ID:          7,
		TTL:         64,
		Protocol:    proto,
		SrcAddr:     tcpip.AddrFrom4(src.As4()),
		DstAddr:     tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], payload)
	return b
}

// udp4Frame returns an Ethernet/IPv4/UDP frame with a zero UDP checksum.
func udp4Frame(dst, src MAC, srcIP, dstIP netip.Addr, payload []byte) []byte {
	u := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(u).Encode(&header.UDPFields{SrcPort: 68, DstPort: 67, Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], payload)
	return eth(dst, src, etherTypeIPv4, ipv4(srcIP, dstIP, uint8(header.UDPProtocolNumber), u))
}

// pattern returns n payload bytes that differ from segment to segment.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// tcpFrame returns an Ethernet/IP/TCP frame (IPv4 or IPv6 by the address
// family) carrying payload, with a 12-byte TCP option block (NOP NOP
// timestamp) and valid IP header checksum. The TCP checksum field holds
// the pseudo-header sum only, as a sender using offloads leaves it; the
// returned VnetHdr describes it as a GSO frame of mss-byte segments (or a
// plain NEEDS_CSUM frame when mss is 0).
func tcpFrame(dst, src MAC, srcIP, dstIP netip.Addr, seq uint32, flags header.TCPFlags, mss int, payload []byte) ([]byte, VnetHdr) {
	const tcpHdrLen = header.TCPMinimumSize + 12
	t := make([]byte, tcpHdrLen+len(payload))
	header.TCP(t).Encode(&header.TCPFields{
		SrcPort:    40000,
		DstPort:    80,
		SeqNum:     seq,
		AckNum:     1000,
		DataOffset: tcpHdrLen,
		Flags:      flags,
		WindowSize: 512,
	})
	copy(t[header.TCPMinimumSize:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	copy(t[tcpHdrLen:], payload)
	sum := pseudoSum(srcIP.AsSlice(), dstIP.AsSlice(), len(t))
	header.TCP(t).SetChecksum(sum)

	var frame []byte
	var l3Len int
	h := VnetHdr{Flags: VnetFlagNeedsCsum, CsumOffset: 16}
	if srcIP.Is4() {
		frame = eth(dst, src, etherTypeIPv4, ipv4(srcIP, dstIP, uint8(header.TCPProtocolNumber), t))
		l3Len = header.IPv4MinimumSize
		h.GSOType = GSOTCPv4
	} else {
		ip := make([]byte, header.IPv6MinimumSize+len(t))
		header.IPv6(ip).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(len(t)),
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           tcpip.AddrFrom16(srcIP.As16()),
			DstAddr:           tcpip.AddrFrom16(dstIP.As16()),
		})
		copy(ip[header.IPv6MinimumSize:], t)
		frame = eth(dst, src, etherTypeIPv6, ip)
		l3Len = header.IPv6MinimumSize
		h.GSOType = GSOTCPv6
	}
	h.CsumStart = uint16(ethHdrLen + l3Len)
	h.HdrLen = uint16(ethHdrLen + l3Len + tcpHdrLen)
	h.GSOSize = uint16(mss)
	if mss == 0 {
		h.GSOType = GSONone
	}
	return frame, h
}

// tcpSeg is what checkTCP reads back from a complete TCP frame.
type tcpSeg struct {
	Seq     uint32
	Flags   header.TCPFlags
	IPID    uint16 // IPv4 only
	Payload []byte
}

// checkTCP verifies the IP and TCP checksums and lengths of a complete
// Ethernet/IP/TCP frame and returns its fields.
func checkTCP(t *testing.T, frame []byte) tcpSeg {
	t.Helper()
	var seg tcpSeg
	var tcp header.TCP
	var pseudo uint16
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeIPv4:
		ip := header.IPv4(frame[ethHdrLen:])
		if !ip.IsValid(len(ip)) {
			t.Fatalf("invalid IPv4 header in %d-byte frame", len(frame))
		}
		if int(ip.TotalLength()) != len(ip) {
			t.Errorf("IPv4 total length %d, packet %d bytes", ip.TotalLength(), len(ip))
		}
		if !ip.IsChecksumValid() {
			t.Errorf("IPv4 header checksum %#04x invalid", ip.Checksum())
		}
		seg.IPID = ip.ID()
		tcp = header.TCP(ip.Payload())
		pseudo = pseudoSum(ip.SourceAddressSlice(), ip.DestinationAddressSlice(), len(tcp))
	case etherTypeIPv6:
		ip := header.IPv6(frame[ethHdrLen:])
		if int(ip.PayloadLength())+header.IPv6MinimumSize != len(ip) {
			t.Errorf("IPv6 payload length %d, packet %d bytes", ip.PayloadLength(), len(ip))
		}
		tcp = header.TCP(ip.Payload())
		pseudo = pseudoSum(ip.SourceAddressSlice(), ip.DestinationAddressSlice(), len(tcp))
	default:
		t.Fatalf("not an IP frame: ethertype %#04x", binary.BigEndian.Uint16(frame[12:14]))
	}
	if got := checksum.Checksum(tcp, pseudo); got != 0xffff {
		t.Errorf("TCP checksum %#04x invalid (sum %#04x)", tcp.Checksum(), got)
	}
	seg.Seq = tcp.SequenceNumber()
	seg.Flags = tcp.Flags()
	seg.Payload = tcp.Payload()
	return seg
}

// bytesEqual makes cmp compare byte slices whole: element-wise
// comparison of 64 KiB payloads is slow, and a diff of them unreadable.
var bytesEqual = cmp.Comparer(bytes.Equal)
