package stack

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	vswitch "github.com/usernet/usernet/switch"
)

// outboundPacket builds a packet as netstack hands it to WritePackets:
// Ethernet, IPv4 and transport headers pushed into the reserved first
// view, and the payload in views of the given sizes, with TSO options.
func outboundPacket(proto tcpip.TransportProtocolNumber, views ...int) *gstack.PacketBuffer {
	var payload buffer.Buffer
	n := 0
	for _, size := range views {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(n + i)
		}
		n += size
		payload.Append(buffer.NewViewWithData(b))
	}
	th := header.TCPMinimumSize
	if proto == header.UDPProtocolNumber {
		th = header.UDPMinimumSize
	}
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{
		ReserveHeaderBytes: header.EthernetMinimumSize + header.IPv4MinimumSize + th,
		Payload:            payload,
	})
	tb := pkt.TransportHeader().Push(th)
	for i := range tb {
		tb[i] = byte(0xa0 + i)
	}
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + th + n),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 1}),
		DstAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 40}),
	})
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{SrcAddr: "\x02\x00\x00\x00\x00\x01", DstAddr: "\x02\x00\x00\x00\x00\x28", Type: header.IPv4ProtocolNumber})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.TransportProtocolNumber = proto
	pkt.GSOOptions = gstack.GSO{Type: gstack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1460, L3HdrLen: header.IPv4MinimumSize}
	return pkt
}

// gather returns a frame's bytes, contiguous or scatter.
func gather(f *vswitch.Frame) []byte {
	s := f.Slices()
	if s == nil {
		return bytes.Clone(f.Data)
	}
	var b []byte
	for _, p := range s {
		b = append(b, p...)
	}
	return b
}

// TestScatterFromPacket checks which packets leave as scatter frames, that
// a scatter frame has the bytes and offloads the copying path would give,
// and that it holds a reference to the packet exactly until its last
// DecRef.
func TestScatterFromPacket(t *testing.T) {
	tests := []struct {
		name    string
		proto   tcpip.TransportProtocolNumber
		views   []int
		scatter bool
	}{
		{"TCP super-frame", header.TCPProtocolNumber, []int{30000, 35000}, true},
		{"TCP one segment", header.TCPProtocolNumber, []int{1400}, true},
		{"pure ACK", header.TCPProtocolNumber, nil, false},
		{"UDP", header.UDPProtocolNumber, []int{1400}, false},
		{"too many views", header.TCPProtocolNumber, make64(maxScatterSlices + 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := outboundPacket(tt.proto, tt.views...)
			defer pkt.DecRef()
			want := frameFromPacket(pkt)
			defer want.DecRef()
			f := scatterFromPacket(pkt)
			if got := f != nil; got != tt.scatter {
				t.Fatalf("scatterFromPacket made a frame: %v, want %v", got, tt.scatter)
			}
			if f == nil {
				if got := pkt.ReadRefs(); got != 1 {
					t.Errorf("packet refs = %d after declining, want 1", got)
				}
				return
			}
			if f.Slices() == nil {
				t.Fatalf("frame is contiguous, want scatter")
			}
			if diff := cmp.Diff(want.Data, gather(f)); diff != "" {
				t.Errorf("frame bytes (-copy +scatter):\n%s", diff)
			}
			if diff := cmp.Diff(want.Hdr, f.Hdr); diff != "" {
				t.Errorf("offloads (-copy +scatter):\n%s", diff)
			}
			if got := len(f.Slices()[0]); got < pkt.HeaderSize() {
				t.Errorf("first slice holds %d bytes, want all %d header bytes", got, pkt.HeaderSize())
			}
			f.IncRef()
			f.DecRef()
			if got := pkt.ReadRefs(); got != 2 {
				t.Errorf("packet refs = %d while the frame lives, want 2", got)
			}
			f.DecRef()
			if got := pkt.ReadRefs(); got != 1 {
				t.Errorf("packet refs = %d after the frame's last DecRef, want 1", got)
			}
		})
	}
}

func make64(n int) []int {
	v := make([]int, n)
	for i := range v {
		v[i] = 64
	}
	return v
}

// TestScatterFromPacketAllocs checks that making and releasing a scatter
// frame allocates nothing once the frame pool is warm.
func TestScatterFromPacketAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	pkt := outboundPacket(header.TCPProtocolNumber, 30000, 35000)
	defer pkt.DecRef()
	allocs := testing.AllocsPerRun(100, func() {
		scatterFromPacket(pkt).DecRef()
	})
	if allocs != 0 {
		t.Errorf("scatterFromPacket: %v allocations per packet, want 0", allocs)
	}
}
