package vswitch

import (
	"encoding/binary"
	"errors"
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Software segmentation and checksumming, step 9 of the packet path (see
// forward.go): what a NIC does for TSO and checksum offload, done for a
// port that was attached without Offloads.

// maxSegments bounds how many frames Segment makes of one super-frame.
// 64 KiB at the smallest MSS Linux uses (88) is about 750; the bound
// stops a guest from making the switch build tens of thousands of frames
// with a tiny GSOSize.
const maxSegments = 1024

// errNotTSO is returned by Segment for a frame it cannot segment.
var errNotTSO = errors.New("not a TCP TSO frame")

// tsoLayout locates the headers of a TCP super-frame.
type tsoLayout struct {
	l3, l4  int // offsets of the IP and TCP headers
	payload int // offset of the TCP payload (= total header length)
	end     int // end of the IP packet; bytes after it are link padding
	v6      bool
}

// parseTSO checks that the n-byte frame whose first bytes are d is an
// Ethernet frame (optionally with one VLAN tag) carrying IPv4 or IPv6 with
// TCP directly inside, as h's GSO type says, and returns where its headers
// are. d must hold every header (it is the whole frame, or a scatter
// frame's first slice). It reads through byte-slice views and allocates
// nothing.
func parseTSO(d []byte, n int, h VnetHdr) (tsoLayout, error) {
	var l tsoLayout
	typ := h.GSOType &^ GSOECN
	if typ != GSOTCPv4 && typ != GSOTCPv6 {
		return l, fmt.Errorf("GSO type %#x: %w", h.GSOType, errNotTSO)
	}
	if h.GSOSize == 0 {
		return l, fmt.Errorf("GSO size 0: %w", errNotTSO)
	}
	if len(d) < ethHdrLen {
		return l, fmt.Errorf("frame of %d bytes: %w", len(d), errNotTSO)
	}
	l.l3 = ethHdrLen
	et := binary.BigEndian.Uint16(d[12:14])
	if et == etherTypeVLAN {
		if len(d) < ethHdrLen+4 {
			return l, fmt.Errorf("truncated VLAN tag: %w", errNotTSO)
		}
		l.l3 += 4
		et = binary.BigEndian.Uint16(d[16:18])
	}
	switch {
	case typ == GSOTCPv4 && et == etherTypeIPv4:
		ip := header.IPv4(d[l.l3:])
		if len(ip) < header.IPv4MinimumSize || ip[0]>>4 != 4 {
			return l, fmt.Errorf("bad IPv4 header: %w", errNotTSO)
		}
		ihl := int(ip.HeaderLength())
		total := int(ip.TotalLength())
		if ihl < header.IPv4MinimumSize || ihl > len(ip) || total < ihl || total > n-l.l3 {
			return l, fmt.Errorf("IPv4 header length %d, total length %d in %d bytes: %w", ihl, total, n-l.l3, errNotTSO)
		}
		if ip.Protocol() != uint8(header.TCPProtocolNumber) {
			return l, fmt.Errorf("IPv4 protocol %d: %w", ip.Protocol(), errNotTSO)
		}
		if ip.More() || ip.FragmentOffset() != 0 {
			return l, fmt.Errorf("IPv4 fragment: %w", errNotTSO)
		}
		l.l4 = l.l3 + ihl
		l.end = l.l3 + total
	case typ == GSOTCPv6 && et == etherTypeIPv6:
		ip := header.IPv6(d[l.l3:])
		if len(ip) < header.IPv6MinimumSize || ip[0]>>4 != 6 {
			return l, fmt.Errorf("bad IPv6 header: %w", errNotTSO)
		}
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return l, fmt.Errorf("IPv6 next header %d (extension headers are not segmented): %w", ip.NextHeader(), errNotTSO)
		}
		pl := int(ip.PayloadLength())
		if pl == 0 || header.IPv6MinimumSize+pl > n-l.l3 {
			return l, fmt.Errorf("IPv6 payload length %d in %d bytes: %w", pl, n-l.l3, errNotTSO)
		}
		l.v6 = true
		l.l4 = l.l3 + header.IPv6MinimumSize
		l.end = l.l4 + pl
	default:
		return l, fmt.Errorf("GSO type %#x on ethertype %#04x: %w", h.GSOType, et, errNotTSO)
	}
	if l.end-l.l4 < header.TCPMinimumSize || l.l4+header.TCPMinimumSize > len(d) {
		return l, fmt.Errorf("truncated TCP header: %w", errNotTSO)
	}
	doff := int(header.TCP(d[l.l4:]).DataOffset())
	if doff < header.TCPMinimumSize || l.l4+doff > l.end || l.l4+doff > len(d) {
		return l, fmt.Errorf("TCP data offset %d: %w", doff, errNotTSO)
	}
	l.payload = l.l4 + doff
	if n := (l.end - l.payload + int(h.GSOSize) - 1) / int(h.GSOSize); n > maxSegments {
		return l, fmt.Errorf("%d payload bytes at GSO size %d make %d segments, more than %d: %w", l.end-l.payload, h.GSOSize, n, maxSegments, errNotTSO)
	}
	return l, nil
}

// Segment splits the TCP TSO super-frame f (f.Hdr.GSOType TCPv4 or TCPv6,
// with or without GSOECN) into frames of at most f.Hdr.GSOSize payload
// bytes each and appends them to out, each with one reference and a zero
// Hdr. Every segment gets the original headers with the IP total length
// (IPv4, with consecutive IDs) or payload length (IPv6), the TCP sequence
// number advanced by the payload before it, FIN and PSH only on the last
// segment, CWR only on the first, and complete IP and TCP checksums.
// Bytes after the IP packet (link padding) are not copied.
//
// Segment neither modifies f nor takes its reference. It returns out
// unchanged and an error if f is not a well-formed TSO frame: arbitrary
// guest bytes are safe to pass; so is a scatter frame, which it rejects
// (Segment reads Data only). It allocates only the segments, from the
// frame pools.
func Segment(f *Frame, out []*Frame) ([]*Frame, error) {
	d := f.Data
	l, err := parseTSO(d, len(d), f.Hdr)
	if err != nil {
		return out, fmt.Errorf("segment: %w", err)
	}
	mss := int(f.Hdr.GSOSize)
	payload := l.end - l.payload
	nseg := max((payload+mss-1)/mss, 1)

	tcp := header.TCP(d[l.l4:])
	seq := tcp.SequenceNumber()
	flags := tcp.Flags()
	var id uint16
	if !l.v6 {
		id = header.IPv4(d[l.l3:]).ID()
	}
	hdrLen := l.payload
	for i := range nseg {
		off := i * mss
		n := min(mss, payload-off)
		s := NewFrame(hdrLen + n)
		copy(s.Data, d[:hdrLen])
		copy(s.Data[hdrLen:], d[hdrLen+off:hdrLen+off+n])

		segLen := hdrLen - l.l4 + n // TCP header + payload
		var ipSum uint16
		if l.v6 {
			ip := header.IPv6(s.Data[l.l3:])
			ip.SetPayloadLength(uint16(segLen))
			ipSum = pseudoSum(ip.SourceAddressSlice(), ip.DestinationAddressSlice(), segLen)
		} else {
			ip := header.IPv4(s.Data[l.l3:])
			ip.SetTotalLength(uint16(l.l4 - l.l3 + segLen))
			ip.SetID(id + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
			ipSum = pseudoSum(ip.SourceAddressSlice(), ip.DestinationAddressSlice(), segLen)
		}

		th := header.TCP(s.Data[l.l4:])
		th.SetSequenceNumber(seq + uint32(off))
		fl := flags
		if i != nseg-1 {
			fl &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i != 0 {
			fl &^= header.TCPFlagCwr
		}
		th.SetFlags(uint8(fl))
		th.SetChecksum(0)
		th.SetChecksum(^checksum.Checksum(s.Data[l.l4:], ipSum))
		out = append(out, s)
	}
	return out, nil
}

// pseudoSum returns the ones'-complement sum of the TCP pseudo-header
// (RFC 9293 section 3.1, RFC 8200 section 8.1) without allocating.
func pseudoSum(src, dst []byte, tcpLen int) uint16 {
	sum := checksum.Checksum(src, 0)
	sum = checksum.Checksum(dst, sum)
	sum = checksum.Combine(sum, uint16(header.TCPProtocolNumber))
	return checksum.Combine(sum, uint16(tcpLen))
}

// Checksum completes the partial checksum of a frame with
// VnetFlagNeedsCsum set, as a NIC with checksum offload would: the 16-bit
// field at CsumStart+CsumOffset holds the pseudo-header sum, and the
// ones'-complement sum of everything from CsumStart to the end of the
// frame replaces it. A result of zero is written as 0xffff (UDP reserves
// zero for "no checksum"; for TCP both mean the same). The flag is then
// cleared. A frame without the flag is left alone. Checksum modifies f in
// place, so the caller must be its only holder. It returns an error,
// leaving f unchanged, if the offsets fall outside the frame or f is a
// scatter frame (Checksum works on Data only).
func Checksum(f *Frame) error {
	h := &f.Hdr
	if h.Flags&VnetFlagNeedsCsum == 0 {
		return nil
	}
	start, field := int(h.CsumStart), int(h.CsumStart)+int(h.CsumOffset)
	if field+2 > len(f.Data) {
		return fmt.Errorf("checksum: start %d offset %d beyond %d-byte frame", h.CsumStart, h.CsumOffset, len(f.Data))
	}
	sum := ^checksum.Checksum(f.Data[start:], 0)
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(f.Data[field:], sum)
	h.Flags &^= VnetFlagNeedsCsum
	return nil
}
