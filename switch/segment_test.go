package vswitch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// wantSegments returns what segmenting a super-frame must produce.
func wantSegments(seq uint32, flags header.TCPFlags, ipID uint16, v4 bool, mss int, payload []byte) []tcpSeg {
	var want []tcpSeg
	for off := 0; off < len(payload) || off == 0; off += mss {
		end := min(off+mss, len(payload))
		fl := flags
		if end != len(payload) {
			fl &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if off != 0 {
			fl &^= header.TCPFlagCwr
		}
		s := tcpSeg{Seq: seq + uint32(off), Flags: fl, Payload: payload[off:end]}
		if v4 {
			s.IPID = ipID + uint16(len(want))
		}
		want = append(want, s)
		if end == len(payload) {
			break
		}
	}
	return want
}

// superFrameLen is the TCP payload of a 64 KiB super-frame over IPv4 with
// our 32-byte TCP header: the largest IPv4 packet holds 65535 bytes.
const superFrameLen = 65535 - header.IPv4MinimumSize - header.TCPMinimumSize - 12

func TestGSOCrossesSwitch(t *testing.T) {
	tests := []struct {
		name         string
		src          netipPair
		mss, payload int
		flags        header.TCPFlags
	}{
		{"TCPv4 64 KiB", v4Pair, 1448, superFrameLen, header.TCPFlagAck | header.TCPFlagPsh},
		{"TCPv6 64 KiB", v6Pair, 1428, MaxFrameLen - ethHdrLen - header.IPv6MinimumSize - header.TCPMinimumSize - 12, header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin},
		{"TCPv4 with CWR and FIN, uneven tail", v4Pair, 1000, 4500, header.TCPFlagAck | header.TCPFlagCwr | header.TCPFlagFin | header.TCPFlagPsh},
		{"TCPv4 shorter than one segment", v4Pair, 1448, 100, header.TCPFlagAck},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			src := h.endpoint(macA, PortConfig{Name: "src", Offloads: true})
			off := h.endpoint(macB, PortConfig{Name: "offload", Offloads: true})
			plain := h.endpoint(macC, PortConfig{Name: "plain"})

			payload := pattern(tt.payload)
			frame, hdr := tcpFrame(macX, macA, tt.src.a, tt.src.b, 1<<31, tt.flags, tt.mss, payload)
			src.sendHdr(hdr, frame)
			h.sync()

			gotHdr, got := off.next()
			if gotHdr != hdr || !bytes.Equal(got, frame) {
				t.Errorf("offload port got a %d-byte frame with %+v; want the %d-byte super-frame whole with %+v", len(got), gotHdr, len(frame), hdr)
			}
			off.expect()

			var segs []tcpSeg
			for _, f := range plain.received() {
				if len(f) > int(hdr.HdrLen)+tt.mss {
					t.Errorf("segment of %d bytes exceeds headers + MSS", len(f))
				}
				segs = append(segs, checkTCP(t, f))
			}
			var id uint16
			if tt.src.a.Is4() {
				id = header.IPv4(frame[ethHdrLen:]).ID()
			}
			want := wantSegments(1<<31, tt.flags, id, tt.src.a.Is4(), tt.mss, payload)
			if diff := cmp.Diff(want, segs, bytesEqual); diff != "" {
				t.Errorf("segments at the plain port (-want +got):\n%s", diff)
			}
			if got := plain.att.Stats(); got.DropTxError != 0 {
				t.Errorf("plain port DropTxError = %d", got.DropTxError)
			}
		})
	}
}

func TestNeedsCsumCompleted(t *testing.T) {
	for _, tt := range []struct {
		name string
		pair netipPair
	}{{"TCPv4", v4Pair}, {"TCPv6", v6Pair}} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			src := h.endpoint(macA, PortConfig{Name: "src", Offloads: true})
			off := h.endpoint(macB, PortConfig{Name: "offload", Offloads: true})
			plain := h.endpoint(macC, PortConfig{Name: "plain"})

			payload := pattern(999) // odd length exercises the padding byte
			frame, hdr := tcpFrame(macX, macA, tt.pair.a, tt.pair.b, 5, header.TCPFlagAck, 0, payload)
			src.sendHdr(hdr, frame)
			h.sync()

			gotHdr, got := off.next()
			if gotHdr != hdr || !bytes.Equal(got, frame) {
				t.Errorf("offload port got the frame changed: hdr %+v, want %+v", gotHdr, hdr)
			}
			off.expect()
			gotHdr, got = plain.next()
			if gotHdr != (VnetHdr{}) {
				t.Errorf("plain port got hdr %+v, want zero", gotHdr)
			}
			seg := checkTCP(t, got)
			if !bytes.Equal(seg.Payload, payload) {
				t.Errorf("plain port payload differs")
			}
			plain.expect()
		})
	}
}

func TestChecksum(t *testing.T) {
	frame, hdr := tcpFrame(macB, macA, ipA, ipB, 5, header.TCPFlagAck, 0, pattern(64))
	udp := udp4Frame(macB, macA, ipA, ipB, []byte{0xff, 0xff})
	tests := []struct {
		name    string
		frame   []byte
		hdr     VnetHdr
		wantErr bool
		check   func(t *testing.T, b []byte)
	}{
		{"partial TCP checksum completed", frame, hdr, false, func(t *testing.T, b []byte) { checkTCP(t, b) }},
		{"no flag leaves the frame alone", frame, VnetHdr{}, false, func(t *testing.T, b []byte) {
			if !bytes.Equal(b, frame) {
				t.Errorf("frame changed")
			}
		}},
		{"offset beyond the frame", frame, VnetHdr{Flags: VnetFlagNeedsCsum, CsumStart: uint16(len(frame) - 1), CsumOffset: 0}, true, nil},
		{"zero sum written as 0xffff", zeroSumUDP(udp), VnetHdr{Flags: VnetFlagNeedsCsum, CsumStart: 34, CsumOffset: 6}, false, func(t *testing.T, b []byte) {
			if got := binary.BigEndian.Uint16(b[40:]); got != 0xffff {
				t.Errorf("UDP checksum = %#04x, want 0xffff", got)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := frameOf(tt.frame)
			defer f.DecRef()
			f.Hdr = tt.hdr
			err := Checksum(f)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Checksum() error = %v, want error %t", err, tt.wantErr)
			}
			if err != nil {
				if !bytes.Equal(f.Data, tt.frame) || f.Hdr != tt.hdr {
					t.Errorf("Checksum failed but changed the frame")
				}
				return
			}
			if f.Hdr.Flags&VnetFlagNeedsCsum != 0 {
				t.Errorf("NEEDS_CSUM still set")
			}
			tt.check(t, f.Data)
		})
	}
}

// zeroSumUDP returns udp with its UDP checksum field set so that the
// completed checksum comes out as zero.
func zeroSumUDP(udp []byte) []byte {
	b := bytes.Clone(udp)
	u := b[34:]
	binary.BigEndian.PutUint16(u[6:], 0)
	sum := checksum.Checksum(u, 0)
	// Choose the field so that the ones'-complement sum is 0xffff.
	binary.BigEndian.PutUint16(u[6:], ^sum)
	return b
}

func TestSegmentErrors(t *testing.T) {
	good, hdr := tcpFrame(macB, macA, ipA, ipB, 1, header.TCPFlagAck, 100, pattern(1000))
	good6, hdr6 := tcpFrame(macB, macA, ip6A, ip6B, 1, header.TCPFlagAck, 100, pattern(1000))
	big, bigHdr := tcpFrame(macB, macA, ipA, ipB, 1, header.TCPFlagAck, 1, pattern(maxSegments+1))
	mutate := func(b []byte, f func(b []byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	withHdr := func(f func(h *VnetHdr)) VnetHdr {
		h := hdr
		f(&h)
		return h
	}
	tests := []struct {
		name  string
		frame []byte
		hdr   VnetHdr
	}{
		{"not GSO", good, VnetHdr{}},
		{"UDP GSO", good, withHdr(func(h *VnetHdr) { h.GSOType = GSOUDPL4 })},
		{"zero GSO size", good, withHdr(func(h *VnetHdr) { h.GSOSize = 0 })},
		{"TCPv6 type on IPv4", good, withHdr(func(h *VnetHdr) { h.GSOType = GSOTCPv6 })},
		{"TCPv4 type on IPv6", good6, withHdr(func(h *VnetHdr) { h.GSOType = GSOTCPv4 })},
		{"truncated Ethernet", good[:10], hdr},
		{"truncated IPv4", good[:30], hdr},
		{"IPv4 total length beyond frame", mutate(good, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 5000) }), hdr},
		{"IPv4 header length too small", mutate(good, func(b []byte) { b[14] = 0x44 }), hdr},
		{"IPv4 fragment", mutate(good, func(b []byte) { b[20] |= 0x20 }), hdr},
		{"not TCP", mutate(good, func(b []byte) { b[23] = 17 }), hdr},
		{"TCP data offset too small", mutate(good, func(b []byte) { b[46] = 0x40 }), hdr},
		{"TCP data offset beyond packet", mutate(good[:70], func(b []byte) { binary.BigEndian.PutUint16(b[16:], 50) }), hdr},
		{"IPv6 extension header", mutate(good6, func(b []byte) { b[20] = 0 }), hdr6},
		{"IPv6 payload length zero", mutate(good6, func(b []byte) { binary.BigEndian.PutUint16(b[18:], 0) }), hdr6},
		{"too many segments", big, bigHdr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := frameOf(tt.frame)
			defer f.DecRef()
			f.Hdr = tt.hdr
			out, err := Segment(f, nil)
			if !errors.Is(err, errNotTSO) {
				t.Errorf("Segment() error = %v, want errNotTSO", err)
			}
			if len(out) != 0 {
				t.Errorf("Segment() returned %d frames with an error", len(out))
			}
		})
	}
}

func TestSegmentVLAN(t *testing.T) {
	frame, hdr := tcpFrame(macB, macA, ipA, ipB, 77, header.TCPFlagAck|header.TCPFlagPsh, 500, pattern(1200))
	tagged := append(append(bytes.Clone(frame[:12]), 0x81, 0x00, 0x00, 0x07), frame[12:]...)
	f := frameOf(tagged)
	defer f.DecRef()
	f.Hdr = hdr
	out, err := Segment(f, nil)
	if err != nil {
		t.Fatalf("Segment(VLAN-tagged): %v", err)
	}
	var segs []tcpSeg
	for _, s := range out {
		if !bytes.Equal(s.Data[12:16], []byte{0x81, 0x00, 0x00, 0x07}) {
			t.Errorf("segment lost its VLAN tag")
		}
		untagged := append(bytes.Clone(s.Data[:12]), s.Data[16:]...)
		segs = append(segs, checkTCP(t, untagged))
		s.DecRef()
	}
	want := wantSegments(77, header.TCPFlagAck|header.TCPFlagPsh, header.IPv4(frame[ethHdrLen:]).ID(), true, 500, pattern(1200))
	if diff := cmp.Diff(want, segs, bytesEqual); diff != "" {
		t.Errorf("segments (-want +got):\n%s", diff)
	}
}

func FuzzDecodeVnetHdr(f *testing.F) {
	f.Add([]byte{1, 1, 54, 0, 168, 5, 34, 0, 16, 0})
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeVnetHdr(b)
		if len(b) < VnetHdrLen {
			if !errors.Is(err, ErrShortVnetHdr) {
				t.Fatalf("DecodeVnetHdr(%d bytes) error = %v, want ErrShortVnetHdr", len(b), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("DecodeVnetHdr: %v", err)
		}
		enc := make([]byte, VnetHdrLen)
		h.Encode(enc)
		if !bytes.Equal(enc, b[:VnetHdrLen]) {
			t.Fatalf("Encode(Decode(%x)) = %x", b[:VnetHdrLen], enc)
		}
	})
}

func FuzzSegment(f *testing.F) {
	for _, seed := range []struct {
		pair netipPair
		mss  int
		n    int
	}{{v4Pair, 100, 1000}, {v6Pair, 536, 3000}, {v4Pair, 1, 3}} {
		frame, hdr := tcpFrame(macB, macA, seed.pair.a, seed.pair.b, 9, header.TCPFlagAck|header.TCPFlagFin, seed.mss, pattern(seed.n))
		f.Add(frame, hdr.Flags, hdr.GSOType, hdr.GSOSize, hdr.CsumStart, hdr.CsumOffset)
	}
	f.Fuzz(func(t *testing.T, data []byte, flags, gsoType uint8, gsoSize, csumStart, csumOffset uint16) {
		if len(data) > MaxFrameLen {
			return
		}
		hdr := VnetHdr{Flags: flags, GSOType: gsoType, GSOSize: gsoSize, CsumStart: csumStart, CsumOffset: csumOffset}
		fr := frameOf(data)
		fr.Hdr = hdr
		defer fr.DecRef()
		out, err := Segment(fr, nil)
		if !bytes.Equal(fr.Data, data) || fr.Hdr != hdr {
			t.Fatalf("Segment modified its input")
		}
		if err != nil {
			if len(out) != 0 {
				t.Fatalf("Segment returned frames with error %v", err)
			}
		} else {
			l, _ := parseTSO(data, len(data), hdr)
			var payload []byte
			for _, s := range out {
				if s.Hdr != (VnetHdr{}) {
					t.Fatalf("segment has hdr %+v", s.Hdr)
				}
				if len(s.Data)-l.payload > int(gsoSize) {
					t.Fatalf("segment payload %d > GSO size %d", len(s.Data)-l.payload, gsoSize)
				}
				payload = append(payload, s.Data[l.payload:]...)
				verifySegment(t, s.Data, l)
				s.DecRef()
			}
			if !bytes.Equal(payload, data[l.payload:l.end]) {
				t.Fatalf("reassembled payload differs from the super-frame's")
			}
		}

		// Checksum must be equally robust.
		c := frameOf(data)
		c.Hdr = hdr
		_ = Checksum(c)
		c.DecRef()
	})
}

// verifySegment checks the checksums of a segment laid out like l.
func verifySegment(t *testing.T, d []byte, l tsoLayout) {
	t.Helper()
	var pseudo uint16
	if l.v6 {
		ip := header.IPv6(d[l.l3:])
		pseudo = pseudoSum(ip.SourceAddressSlice(), ip.DestinationAddressSlice(), len(d)-l.l4)
	} else {
		ip := header.IPv4(d[l.l3:l.l4])
		if checksum.Checksum(ip, 0) != 0xffff {
			t.Fatalf("IPv4 header checksum invalid")
		}
		pseudo = pseudoSum(ip.SourceAddressSlice(), ip.DestinationAddressSlice(), len(d)-l.l4)
	}
	if checksum.Checksum(d[l.l4:], pseudo) != 0xffff {
		t.Fatalf("TCP checksum invalid")
	}
}
