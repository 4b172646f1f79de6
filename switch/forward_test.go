package vswitch

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// countPort counts what it is given and checks the Port contract: a port
// without offloads never sees a GSO or NEEDS_CSUM frame, and no frame is
// shorter than an Ethernet header.
type countPort struct {
	offloads   bool
	frames     atomic.Uint64
	bytes      atomic.Uint64
	violations atomic.Uint64
}

func (p *countPort) WriteFrames(frames []*Frame) error {
	var n uint64
	for _, f := range frames {
		n += uint64(len(f.Data))
		if len(f.Data) < ethHdrLen || !p.offloads && (f.Hdr.IsGSO() || f.Hdr.Flags&VnetFlagNeedsCsum != 0) {
			p.violations.Add(1)
		}
	}
	p.frames.Add(uint64(len(frames)))
	p.bytes.Add(n)
	return nil
}

func (p *countPort) Close() error { return nil }

func FuzzForward(f *testing.F) {
	gso, gsoHdr := tcpFrame(macX, macA, ipA, ipB, 1, header.TCPFlagAck, 100, pattern(1000))
	csum, csumHdr := tcpFrame(macB, macA, ipA, ipB, 1, header.TCPFlagAck, 0, pattern(100))
	seeds := []struct {
		data []byte
		hdr  VnetHdr
	}{
		{gso, gsoHdr},
		{csum, csumHdr},
		{eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)), VnetHdr{}},
		{eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)), VnetHdr{}},
		{[]byte{1, 2, 3}, VnetHdr{}},
	}
	for _, s := range seeds {
		enc := make([]byte, VnetHdrLen)
		s.hdr.Encode(enc)
		f.Add(append(enc, s.data...), false, false)
		f.Add(append(enc, s.data...), true, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, bound, icc bool) {
		hdr, err := DecodeVnetHdr(b)
		if err != nil || len(b)-VnetHdrLen > MaxFrameLen {
			return
		}
		data := b[VnetHdrLen:]
		s := New(Config{DisableICC: !icc})
		cfg := PortConfig{Name: "in", Offloads: true}
		if bound {
			cfg.Bind = &Binding{MAC: macA, IPv4: ipA}
		}
		in, err := s.Attach(sink{}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		plain, off := &countPort{}, &countPort{offloads: true}
		if _, err := s.Attach(plain, PortConfig{Name: "plain", Gateway: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Attach(off, PortConfig{Name: "offload", Offloads: true}); err != nil {
			t.Fatal(err)
		}
		fr := frameOf(data)
		fr.Hdr = hdr
		fr.IncRef()
		in.Input([]*Frame{fr})
		s.Close() // waits for the writers
		if got := fr.refs.Load(); got != 1 {
			t.Fatalf("switch kept %d references to the frame", got-1)
		}
		fr.DecRef()
		if n := plain.violations.Load() + off.violations.Load(); n != 0 {
			t.Fatalf("%d frames broke the Port contract", n)
		}
	})
}

func TestForwardingAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	unicast := eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, pattern(1400)))
	broadcast := eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB))
	gso, gsoHdr := tcpFrame(macB, macA, ipA, ipB, 1, header.TCPFlagAck, 1448, pattern(16*1448))
	csum, csumHdr := tcpFrame(macB, macA, ipA, ipB, 1, header.TCPFlagAck, 0, pattern(1400))
	tests := []struct {
		name     string
		frame    []byte
		hdr      VnetHdr
		offloads bool
		outPer   int  // frames out per frame in
		direct   bool // the destination is a Direct port
	}{
		{"unicast", unicast, VnetHdr{}, true, 1, false},
		{"broadcast", broadcast, VnetHdr{}, true, 1, false},
		{"GSO to an offload port", gso, gsoHdr, true, 1, false},
		{"GSO segmented for a plain port", gso, gsoHdr, false, 16, false},
		{"checksum completed for a plain port", csum, csumHdr, false, 1, false},
		{"unicast to a direct port", unicast, VnetHdr{}, true, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{})
			defer s.Close()
			// Block, so the test measures the whole path rather than
			// drops at a full queue.
			in, err := s.Attach(sink{}, PortConfig{Name: "in", Offloads: true, Block: true})
			if err != nil {
				t.Fatal(err)
			}
			dst := &countPort{offloads: tt.offloads}
			out, err := s.Attach(dst, PortConfig{Name: "out", Offloads: tt.offloads, Direct: tt.direct})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Attach(&countPort{}, PortConfig{Name: "other"}); err != nil {
				t.Fatal(err)
			}
			learn := frameOf(eth(Broadcast, macB, etherTypeARP, arp(macB, ipB, ipA)))
			out.Input([]*Frame{learn})

			// Each run waits for delivery, so the frames in flight (and
			// hence the pools' working set) stay one batch.
			batch := make([]*Frame, 32)
			var want uint64
			run := func() {
				for i := range batch {
					f := NewFrame(len(tt.frame))
					copy(f.Data, tt.frame)
					f.Hdr = tt.hdr
					batch[i] = f
				}
				in.Input(batch)
				want += uint64(len(batch) * tt.outPer)
				deliver(t, dst, want)
			}
			for range 100 { // fill the pools
				run()
			}
			allocs := testing.AllocsPerRun(200, run)
			if allocs != 0 {
				t.Errorf("forwarding a batch of %d allocates %v times", len(batch), allocs)
			}
			if n := dst.violations.Load(); n != 0 {
				t.Errorf("%d frames broke the Port contract", n)
			}
		})
	}
}

// BenchmarkForward measures end-to-end switching of MTU-sized unicast
// frames from one port to another in batches of 64, the ingress blocking
// on a full queue so that nothing is dropped.
func BenchmarkForward(b *testing.B) {
	for _, bc := range []struct {
		name  string
		frame []byte
		hdr   VnetHdr
		plain bool
	}{
		{"unicast-1514", eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, pattern(1480))), VnetHdr{}, false},
		{"broadcast-60", eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)), VnetHdr{}, false},
	} {
		b.Run(bc.name, func(b *testing.B) { benchForward(b, 1, bc.frame, bc.hdr, bc.plain, 1) })
	}
	gso, gsoHdr := tcpFrame(macB, macA, ipA, ipB, 1, header.TCPFlagAck, 1448, pattern(superFrameLen))
	segs := (superFrameLen + 1447) / 1448
	b.Run("tso-64k-offload", func(b *testing.B) { benchForward(b, 1, gso, gsoHdr, false, 1) })
	b.Run("tso-64k-segmented", func(b *testing.B) { benchForward(b, 1, gso, gsoHdr, true, segs) })
}

// BenchmarkForwardParallel switches between GOMAXPROCS independent port
// pairs at once: with no lock shared by all ports it scales with cores.
func BenchmarkForwardParallel(b *testing.B) {
	benchForward(b, runtime.GOMAXPROCS(0), eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, pattern(1480))), VnetHdr{}, false, 1)
}

// benchForward sends b.N frames spread over pairs of ports, each frame
// becoming outPer frames at its destination, and waits for delivery.
func benchForward(b *testing.B, pairs int, frame []byte, hdr VnetHdr, plain bool, outPer int) {
	s := New(Config{})
	defer s.Close()
	type pair struct {
		in  *Attachment
		dst *countPort
		src MAC
	}
	ps := make([]pair, pairs)
	for i := range ps {
		src := MAC{0x02, 0, 0, 0, byte(i), 1}
		dmac := MAC{0x02, 0, 0, 0, byte(i), 2}
		in, err := s.Attach(sink{}, PortConfig{Offloads: true, Block: true})
		if err != nil {
			b.Fatal(err)
		}
		dst := &countPort{offloads: !plain}
		out, err := s.Attach(dst, PortConfig{Offloads: !plain})
		if err != nil {
			b.Fatal(err)
		}
		learn := frameOf(eth(Broadcast, dmac, etherTypeARP, arp(dmac, ipB, ipA)))
		out.Input([]*Frame{learn})
		ps[i] = pair{in, dst, src}
	}
	const batchLen = 64
	per := (b.N + pairs - 1) / pairs
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dmac := MAC{0x02, 0, 0, 0, byte(i), 2}
			batch := make([]*Frame, 0, batchLen)
			for sent := 0; sent < per; {
				batch = batch[:0]
				for ; len(batch) < batchLen && sent < per; sent++ {
					f := NewFrame(len(frame))
					copy(f.Data, frame)
					if !MAC(frame[:6]).IsMulticast() {
						copy(f.Data[0:6], dmac[:])
					}
					copy(f.Data[6:12], p.src[:])
					f.Hdr = hdr
					batch = append(batch, f)
				}
				p.in.Input(batch)
			}
		}()
	}
	wg.Wait()
	var outFrames uint64
	for _, p := range ps {
		// Wait for the writers to deliver, so the time covers it.
		deliver(b, p.dst, uint64(per*outPer))
		outFrames += p.dst.frames.Load()
	}
	b.StopTimer()
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(pairs*per)/sec, "frames/s")
	b.ReportMetric(float64(outFrames)/sec, "out-frames/s")
}

// deliver waits until dst has been written want frames in all, failing
// after waitLimit. It spins rather than sleeps, so that it allocates
// nothing and adds no timer latency to what it measures.
func deliver(t testing.TB, dst *countPort, want uint64) {
	deadline := time.Now().Add(waitLimit)
	for dst.frames.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("port got %d frames, want %d", dst.frames.Load(), want)
		}
		runtime.Gosched()
	}
}
