package vswitch

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// countingOwner is a scatter frame's Owner that counts its releases.
type countingOwner struct{ released atomic.Int32 }

func (o *countingOwner) DecRef() { o.released.Add(1) }

// scatterOf returns a scatter frame over a copy of b, split at the given
// offsets, owned by o.
func scatterOf(o *countingOwner, b []byte, hdr VnetHdr, splits ...int) *Frame {
	b = bytes.Clone(b)
	f := NewScatterFrame(o)
	prev := 0
	for _, s := range splits {
		f.AppendSlice(b[prev:s])
		prev = s
	}
	f.AppendSlice(b[prev:])
	f.Hdr = hdr
	return f
}

// scatterRecorder is a ScatterPort that keeps what it is written,
// gathered, and whether each frame came as a scatter frame.
type scatterRecorder struct {
	mu      sync.Mutex
	hdrs    []VnetHdr
	frames  [][]byte
	scatter []bool
}

func (r *scatterRecorder) AcceptsScatter() {}

func (r *scatterRecorder) WriteFrames(frames []*Frame) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range frames {
		var b []byte
		s := f.Slices()
		if s == nil {
			b = bytes.Clone(f.Data)
		}
		for _, p := range s {
			b = append(b, p...)
		}
		if len(b) != f.Len() {
			panic("Frame.Len disagrees with its bytes")
		}
		r.hdrs = append(r.hdrs, f.Hdr)
		r.frames = append(r.frames, b)
		r.scatter = append(r.scatter, s != nil)
	}
	return nil
}

func (r *scatterRecorder) Close() error { return nil }

func (r *scatterRecorder) written() ([]VnetHdr, [][]byte, []bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hdrs, r.frames, r.scatter
}

// TestScatterFrames sends a scatter TSO super-frame, as the gateway sends
// netstack's segments, to every kind of port: ScatterPorts (Direct and
// queued) get it as it is, other offload ports a contiguous copy, plain
// ports its segments; and the owner is released exactly once, after
// every port is done.
func TestScatterFrames(t *testing.T) {
	gso, gsoHdr := tcpFrame(macC, macA, ipA, ipB, 1, header.TCPFlagAck, 1000, pattern(3000))
	hdrLen := int(gsoHdr.HdrLen)
	in := frameOf(gso)
	in.Hdr = gsoHdr
	segs, err := Segment(in, nil)
	in.DecRef()
	if err != nil {
		t.Fatalf("Segment: %v", err)
	}
	var segFrames [][]byte
	for _, f := range segs {
		segFrames = append(segFrames, bytes.Clone(f.Data))
		f.DecRef()
	}
	// Destination macC is unknown, so the frame floods to every port.
	h := newHarness(t, Config{})
	direct, queued := &scatterRecorder{}, &scatterRecorder{}
	if _, err := h.s.Attach(direct, PortConfig{Name: "direct", Offloads: true, Direct: true}); err != nil {
		t.Fatalf("Attach(direct): %v", err)
	}
	qa, err := h.s.Attach(queued, PortConfig{Name: "queued", Offloads: true})
	if err != nil {
		t.Fatalf("Attach(queued): %v", err)
	}
	offload := h.endpoint(macB, PortConfig{Name: "offload", Offloads: true})
	plain := h.endpoint(macG, PortConfig{Name: "plain"})
	gw, err := h.s.Attach(sink{}, PortConfig{Name: "gateway", Gateway: true, Block: true})
	if err != nil {
		t.Fatalf("Attach(gateway): %v", err)
	}

	o := &countingOwner{}
	gw.Input([]*Frame{scatterOf(o, gso, gsoHdr, hdrLen, hdrLen+1000, hdrLen+1001)})
	h.sync()
	offload.expect(gso)
	plain.expect(segFrames...)
	waitFor(t, "queued port written", func() bool { return qa.Stats().TxFrames >= 2 })

	for _, tt := range []struct {
		name string
		r    *scatterRecorder
	}{{"direct", direct}, {"queued", queued}} {
		hdrs, frames, scatter := tt.r.written()
		// The first frame is the scatter frame, the second h.sync's marker.
		if diff := cmp.Diff([][]byte{gso}, frames[:1]); diff != "" {
			t.Errorf("%s: frames (-want +got):\n%s", tt.name, diff)
		}
		if diff := cmp.Diff([]VnetHdr{gsoHdr}, hdrs[:1]); diff != "" {
			t.Errorf("%s: headers (-want +got):\n%s", tt.name, diff)
		}
		if !scatter[0] {
			t.Errorf("%s: got a contiguous copy, want the scatter frame", tt.name)
		}
	}
	waitFor(t, "owner released", func() bool { return o.released.Load() != 0 })
	if got := o.released.Load(); got != 1 {
		t.Errorf("owner released %d times, want 1", got)
	}
	if got, want := gw.Stats().RxBytes, uint64(len(gso)); got != want {
		t.Errorf("gateway RxBytes = %d, want %d", got, want)
	}
}

// TestScatterFrameChecks checks that the switch's ingress checks read a
// scatter frame's headers in place, and that a dropped scatter frame
// releases its owner.
func TestScatterFrameChecks(t *testing.T) {
	gso, gsoHdr := tcpFrame(macC, macA, ipA, ipB, 1, header.TCPFlagAck, 1000, pattern(3000))
	hdrLen := int(gsoHdr.HdrLen)
	badLen := bytes.Clone(gso)
	// IPv4 total length beyond the frame.
	header.IPv4(badLen[ethHdrLen:]).SetTotalLength(uint16(len(gso)))
	udp := udp4Frame(macC, macA, ipA, ipB, pattern(500))
	tests := []struct {
		name      string
		frame     []byte
		hdr       VnetHdr
		splits    []int
		bind      *Binding
		want      bool // forwarded
		malformed uint64
		spoof     uint64
	}{
		{"GSO headers in first slice", gso, gsoHdr, []int{hdrLen}, nil, true, 0, 0},
		{"GSO headers split", gso, gsoHdr, []int{ethHdrLen + 10}, nil, false, 1, 0},
		{"GSO total length beyond frame", badLen, gsoHdr, []int{hdrLen}, nil, false, 1, 0},
		{"short first slice", udp, VnetHdr{}, []int{10}, nil, false, 1, 0},
		{"bound port passes", udp, VnetHdr{}, []int{ethHdrLen}, &Binding{MAC: macA, IPv4: ipA}, true, 0, 0},
		{"bound port spoofed", udp, VnetHdr{}, []int{ethHdrLen}, &Binding{MAC: macA, IPv4: ipB}, false, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			rec := &scatterRecorder{}
			if _, err := h.s.Attach(rec, PortConfig{Name: "direct", Offloads: true, Direct: true}); err != nil {
				t.Fatalf("Attach(direct): %v", err)
			}
			in, err := h.s.Attach(sink{}, PortConfig{Name: "in", Bind: tt.bind})
			if err != nil {
				t.Fatalf("Attach(in): %v", err)
			}
			o := &countingOwner{}
			in.Input([]*Frame{scatterOf(o, tt.frame, tt.hdr, tt.splits...)})
			_, frames, _ := rec.written()
			var want [][]byte
			if tt.want {
				want = [][]byte{tt.frame}
			}
			if diff := cmp.Diff(want, frames); diff != "" {
				t.Errorf("written (-want +got):\n%s", diff)
			}
			st := in.Stats()
			if st.DropMalformed != tt.malformed || st.DropSpoof != tt.spoof {
				t.Errorf("DropMalformed, DropSpoof = %d, %d; want %d, %d", st.DropMalformed, st.DropSpoof, tt.malformed, tt.spoof)
			}
			if got := o.released.Load(); got != 1 {
				t.Errorf("owner released %d times, want 1", got)
			}
		})
	}
}

// TestScatterDirectAllocs checks that forwarding a scatter frame to a
// Direct ScatterPort allocates nothing once the pools are warm.
func TestScatterDirectAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	gso, gsoHdr := tcpFrame(macC, macA, ipA, ipB, 1, header.TCPFlagAck, 1000, pattern(3000))
	hdrLen := int(gsoHdr.HdrLen)
	s := New(Config{})
	defer s.Close()
	var port countingPort
	d, err := s.Attach(&port, PortConfig{Name: "direct", Offloads: true, Direct: true})
	if err != nil {
		t.Fatalf("Attach(direct): %v", err)
	}
	in, err := s.Attach(sink{}, PortConfig{Name: "in"})
	if err != nil {
		t.Fatalf("Attach(in): %v", err)
	}
	// Teach the switch where macC is.
	d.Input([]*Frame{frameOf(eth(Broadcast, macC, etherTypeARP, arp(macC, ipB, ipA)))})
	o := &countingOwner{}
	batch := make([]*Frame, 1)
	run := func() {
		f := NewScatterFrame(o)
		f.AppendSlice(gso[:hdrLen])
		f.AppendSlice(gso[hdrLen:])
		f.Hdr = gsoHdr
		batch[0] = f
		in.Input(batch)
	}
	for range 100 {
		run()
	}
	if allocs := testing.AllocsPerRun(200, run); allocs != 0 {
		t.Errorf("forwarding a scatter frame allocates %v times", allocs)
	}
	if got, want := port.scatter.Load(), int64(o.released.Load()); got != want {
		t.Errorf("port saw %d scatter frames, owner released %d times", got, want)
	}
}

// countingPort is a ScatterPort that counts the scatter frames it is
// written, without keeping anything.
type countingPort struct{ scatter atomic.Int64 }

func (*countingPort) AcceptsScatter() {}

func (p *countingPort) WriteFrames(frames []*Frame) error {
	for _, f := range frames {
		if f.Slices() != nil {
			p.scatter.Add(1)
		}
	}
	return nil
}

func (*countingPort) Close() error { return nil }
