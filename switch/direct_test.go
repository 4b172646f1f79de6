package vswitch

import (
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// recorder is a Direct port that keeps copies of what it is written and
// counts writes that arrive after Close.
type recorder struct {
	mu     sync.Mutex
	hdrs   []VnetHdr
	frames [][]byte
	closed bool
	late   int
}

func (r *recorder) WriteFrames(frames []*Frame) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		r.late += len(frames)
		return nil
	}
	for _, f := range frames {
		r.hdrs = append(r.hdrs, f.Hdr)
		r.frames = append(r.frames, append([]byte(nil), f.Data...))
	}
	return nil
}

func (r *recorder) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return nil
}

// take returns and forgets what r has been written so far.
func (r *recorder) take() ([]VnetHdr, [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, f := r.hdrs, r.frames
	r.hdrs, r.frames = nil, nil
	return h, f
}

func TestDirectPort(t *testing.T) {
	gso, gsoHdr := tcpFrame(macC, macA, ipA, ipB, 1, header.TCPFlagAck, 1000, pattern(3000))
	in := frameOf(gso)
	in.Hdr = gsoHdr
	segs, err := Segment(in, nil)
	in.DecRef()
	if err != nil {
		t.Fatalf("Segment: %v", err)
	}
	var segFrames [][]byte
	var segHdrs []VnetHdr
	for _, f := range segs {
		segFrames = append(segFrames, append([]byte(nil), f.Data...))
		segHdrs = append(segHdrs, f.Hdr)
		f.DecRef()
	}
	unicast := eth(macC, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, pattern(100)))
	tests := []struct {
		name      string
		offloads  bool
		frame     []byte
		hdr       VnetHdr
		wantHdrs  []VnetHdr
		wantFrame [][]byte
	}{
		{"unicast", true, unicast, VnetHdr{}, []VnetHdr{{}}, [][]byte{unicast}},
		{"GSO kept for an offload port", true, gso, gsoHdr, []VnetHdr{gsoHdr}, [][]byte{gso}},
		{"GSO segmented for a plain port", false, gso, gsoHdr, segHdrs, segFrames},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			a := h.endpoint(macA, PortConfig{Name: "a", Offloads: true})
			rec := &recorder{}
			d, err := h.s.Attach(rec, PortConfig{Name: "direct", Offloads: tt.offloads, Direct: true, Gateway: true})
			if err != nil {
				t.Fatalf("Attach(direct): %v", err)
			}
			d.Input([]*Frame{frameOf(eth(Broadcast, macC, etherTypeARP, arp(macC, ipB, ipA)))})
			h.sync()
			rec.take()

			a.sendHdr(tt.hdr, tt.frame)
			// No wait but for the switch to take the frame in: a Direct
			// port is written before Input returns, so the frame is there.
			waitFor(t, "a rx", func() bool { return a.att.Stats().RxFrames >= a.sent })
			hdrs, frames := rec.take()
			if diff := cmp.Diff(tt.wantFrame, frames); diff != "" {
				t.Errorf("frames written (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantHdrs, hdrs); diff != "" {
				t.Errorf("headers written (-want +got):\n%s", diff)
			}
			// Written so far: h.sync's marker and this case's frames.
			if got, want := d.Stats().TxFrames, uint64(1+len(tt.wantFrame)); got != want {
				t.Errorf("direct TxFrames = %d, want %d", got, want)
			}
		})
	}
}

func TestDirectPortDetach(t *testing.T) {
	h := newHarness(t, Config{})
	rec := &recorder{}
	d, err := h.s.Attach(rec, PortConfig{Name: "direct", Offloads: true, Direct: true, Gateway: true})
	if err != nil {
		t.Fatalf("Attach(direct): %v", err)
	}
	d.Input([]*Frame{frameOf(eth(Broadcast, macC, etherTypeARP, arp(macC, ipB, ipA)))})
	frame := eth(macC, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, pattern(64)))

	// Writers race Detach; none may reach the port after Close.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				f := frameOf(frame)
				h.probe.Input([]*Frame{f})
			}
		})
	}
	d.Detach()
	wg.Wait()

	f := frameOf(frame)
	f.IncRef()
	h.probe.Input([]*Frame{f})
	if got := f.refs.Load(); got != 1 {
		t.Errorf("forwarding to a detached Direct port kept a reference: refs = %d, want 1", got)
	}
	f.DecRef()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !rec.closed {
		t.Errorf("Detach did not close the port")
	}
	if rec.late != 0 {
		t.Errorf("%d frames written after Close", rec.late)
	}
}
