package vswitch

import (
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var macP = MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0xfe} // sends nothing but markers

func TestLearningAndFlooding(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.endpoint(macA, PortConfig{Name: "a"})
	b := h.endpoint(macB, PortConfig{Name: "b"})
	c := h.endpoint(macC, PortConfig{Name: "c"})

	steps := []struct {
		name          string
		from          *endpoint
		frame         []byte
		toA, toB, toC bool
	}{
		{"broadcast from a floods", a, eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)), false, true, true},
		{"unicast to learned a goes to a only", b, eth(macA, macB, etherTypeIPv4, ipv4(ipB, ipA, 17, nil)), true, false, false},
		{"unicast to learned b goes to b only", a, eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)), false, true, false},
		{"unknown unicast floods", a, eth(macX, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)), false, true, true},
		{"IPv6 multicast 33:33 floods", b, eth(MAC{0x33, 0x33, 0, 0, 0, 1}, macB, etherTypeIPv6, make([]byte, 40)), true, false, true},
		{"IPv4 multicast floods", c, eth(MAC{0x01, 0x00, 0x5e, 0, 0, 0xfb}, macC, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)), true, true, false},
		{"frame to a MAC behind its own port is filtered", a, eth(macA, macA, etherTypeIPv4, ipv4(ipA, ipA, 17, nil)), false, false, false},
		{"a moves to port c", c, eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)), true, true, false},
		{"unicast follows the move", b, eth(macA, macB, etherTypeIPv4, ipv4(ipB, ipA, 17, nil)), false, false, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.t = t
			st.from.send(st.frame)
			h.sync()
			for _, dst := range []struct {
				e    *endpoint
				gets bool
			}{{a, st.toA}, {b, st.toB}, {c, st.toC}} {
				if dst.gets {
					dst.e.expect(st.frame)
				} else {
					dst.e.expect()
				}
			}
		})
	}
}

func TestAging(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h := newHarness(t, Config{Clock: clock.Now})
	a := h.endpoint(macA, PortConfig{Name: "a"})
	b := h.endpoint(macB, PortConfig{Name: "b"})
	c := h.endpoint(macC, PortConfig{Name: "c"})
	toA := eth(macA, macB, etherTypeIPv4, ipv4(ipB, ipA, 17, nil))

	a.send(eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)))
	h.sync()
	b.received()
	c.received()
	a.received()

	clock.Advance(DefaultAgingTime - time.Second)
	if got, ok := h.s.Lookup(macA); !ok || got != a.att {
		t.Fatalf("Lookup(a) after %v = %v, %t; want port a", DefaultAgingTime-time.Second, got, ok)
	}
	b.send(toA)
	h.sync()
	a.expect(toA)
	c.expect()
	b.expect()

	clock.Advance(2 * time.Second)
	if _, ok := h.s.Lookup(macA); ok {
		t.Fatalf("Lookup(a) after %v found an aged-out entry", DefaultAgingTime+time.Second)
	}
	b.send(toA)
	h.sync()
	a.expect(toA)
	c.expect(toA) // flooded: the entry aged out
	b.expect()

	// Traffic from a refreshes the entry.
	a.send(eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)))
	h.sync()
	clock.Advance(DefaultAgingTime - time.Second)
	b.send(toA)
	h.sync()
	a.expect(toA)
	c.expect()
}

func TestAgingTimeConfig(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h := newHarness(t, Config{Clock: clock.Now, AgingTime: 10 * time.Second})
	a := h.endpoint(macA, PortConfig{Name: "a"})
	a.send(eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)))
	h.sync()
	clock.Advance(10 * time.Second)
	if _, ok := h.s.Lookup(macA); !ok {
		t.Errorf("Lookup(a) after exactly the aging time: not found")
	}
	clock.Advance(time.Second)
	if _, ok := h.s.Lookup(macA); ok {
		t.Errorf("Lookup(a) after the aging time: still found")
	}
}

// gatePort holds its writer goroutine in WriteFrames until released.
type gatePort struct {
	entered chan struct{}
	release chan struct{}

	mu     sync.Mutex
	frames [][]byte
	closed bool
}

func newGatePort() *gatePort {
	return &gatePort{entered: make(chan struct{}, 1024), release: make(chan struct{})}
}

func (g *gatePort) WriteFrames(frames []*Frame) error {
	g.mu.Lock()
	for _, f := range frames {
		g.frames = append(g.frames, append([]byte(nil), f.Data...))
	}
	g.mu.Unlock()
	g.entered <- struct{}{}
	<-g.release
	return nil
}

func (g *gatePort) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return nil
}

func (g *gatePort) written() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.frames
}

func numbered(n int) []byte {
	return eth(Broadcast, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, []byte{byte(n)}))
}

func frameOf(b []byte) *Frame {
	f := NewFrame(len(b))
	copy(f.Data, b)
	return f
}

func TestQueueFullDrops(t *testing.T) {
	tests := []struct {
		name      string
		block     bool
		wantDrops uint64
		wantTx    int
	}{
		{"drop when full", false, 3, 3},
		{"block waits for room", true, 0, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{})
			defer s.Close()
			gate := newGatePort()
			slow, err := s.Attach(gate, PortConfig{Name: "slow", QueueLen: 2})
			if err != nil {
				t.Fatal(err)
			}
			in, err := s.Attach(sink{}, PortConfig{Name: "in", Block: tt.block})
			if err != nil {
				t.Fatal(err)
			}
			in.Input([]*Frame{frameOf(numbered(0))})
			<-gate.entered // the writer holds frame 0; the queue is empty

			done := make(chan struct{})
			go func() {
				defer close(done)
				var batch []*Frame
				for i := 1; i <= 5; i++ {
					batch = append(batch, frameOf(numbered(i)))
				}
				in.Input(batch)
			}()
			if tt.block {
				select {
				case <-done:
					t.Fatal("Input with Block returned while the destination queue was full")
				default:
				}
			} else {
				<-done
			}
			close(gate.release)
			<-done
			waitFor(t, "slow tx", func() bool { return len(gate.written()) >= tt.wantTx })

			var want [][]byte
			for i := range tt.wantTx {
				want = append(want, numbered(i))
			}
			if diff := cmp.Diff(want, gate.written()); diff != "" {
				t.Errorf("frames written (-want +got):\n%s", diff)
			}
			got := slow.Stats()
			if got.DropQueueFull != tt.wantDrops {
				t.Errorf("DropQueueFull = %d, want %d", got.DropQueueFull, tt.wantDrops)
			}
			waitFor(t, "tx counters", func() bool { return slow.Stats().TxFrames == uint64(tt.wantTx) })
			if in.Stats().RxFrames != 6 {
				t.Errorf("in RxFrames = %d, want 6", in.Stats().RxFrames)
			}
		})
	}
}

func TestAntiSpoofing(t *testing.T) {
	vlan := eth(Broadcast, macA, etherTypeVLAN, append([]byte{0, 5, 0x08, 0x06}, arp(macA, ipB, ipA)...))
	tests := []struct {
		name          string
		bind          Binding
		frame         []byte
		pass          bool
		wantSpoof     uint64
		wantMalformed uint64
	}{
		{"IPv4 from bound address", Binding{macA, ipA}, eth(macX, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)), true, 0, 0},
		{"DHCP discover from 0.0.0.0", Binding{macA, ipA}, udp4Frame(Broadcast, macA, netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), []byte("discover")), true, 0, 0},
		{"ARP from bound address", Binding{macA, ipA}, eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)), true, 0, 0},
		{"ARP probe from 0.0.0.0", Binding{macA, ipA}, eth(Broadcast, macA, etherTypeARP, arp(macA, netip.IPv4Unspecified(), ipA)), true, 0, 0},
		{"IPv6 from bound MAC", Binding{macA, ipA}, eth(macX, macA, etherTypeIPv6, make([]byte, 40)), true, 0, 0},
		{"any IPv4 source without a bound address", Binding{MAC: macA}, eth(macX, macA, etherTypeIPv4, ipv4(ipB, ipA, 17, nil)), true, 0, 0},
		{"foreign source MAC", Binding{macA, ipA}, eth(macX, macC, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)), false, 1, 0},
		{"foreign source MAC without a bound address", Binding{MAC: macA}, eth(Broadcast, macC, etherTypeARP, arp(macC, ipA, ipB)), false, 1, 0},
		{"ARP with foreign sender address", Binding{macA, ipA}, eth(Broadcast, macA, etherTypeARP, arp(macA, ipB, ipA)), false, 1, 0},
		{"ARP with foreign sender MAC", Binding{macA, ipA}, eth(Broadcast, macA, etherTypeARP, arp(macC, ipA, ipB)), false, 1, 0},
		{"IPv4 with foreign source", Binding{macA, ipA}, eth(macX, macA, etherTypeIPv4, ipv4(ipB, ipA, 17, nil)), false, 1, 0},
		{"VLAN-tagged frame", Binding{macA, ipA}, vlan, false, 1, 0},
		{"truncated ARP", Binding{macA, ipA}, eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)[:20]), false, 0, 1},
		{"truncated IPv4", Binding{macA, ipA}, eth(macX, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)[:12]), false, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			a := h.endpoint(macA, PortConfig{Name: "a", Bind: &tt.bind})
			b := h.endpoint(macB, PortConfig{Name: "b"})
			a.send(tt.frame)
			h.sync()
			if tt.pass {
				b.expect(tt.frame)
			} else {
				b.expect()
			}
			got := a.att.Stats()
			if got.DropSpoof != tt.wantSpoof || got.DropMalformed != tt.wantMalformed {
				t.Errorf("DropSpoof, DropMalformed = %d, %d; want %d, %d", got.DropSpoof, got.DropMalformed, tt.wantSpoof, tt.wantMalformed)
			}
		})
	}
}

func TestAttachErrors(t *testing.T) {
	s := New(Config{})
	tests := []struct {
		name string
		port Port
		cfg  PortConfig
	}{
		{"nil port", nil, PortConfig{}},
		{"negative queue", sink{}, PortConfig{QueueLen: -1}},
		{"multicast binding", sink{}, PortConfig{Bind: &Binding{MAC: Broadcast}}},
		{"IPv6 binding", sink{}, PortConfig{Bind: &Binding{MAC: macA, IPv4: ip6A}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a, err := s.Attach(tt.port, tt.cfg); err == nil {
				t.Errorf("Attach succeeded, want an error")
				a.Detach()
			}
		})
	}
	s.Close()
	if _, err := s.Attach(sink{}, PortConfig{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Attach after Close: err = %v, want ErrClosed", err)
	}
}

func TestICC(t *testing.T) {
	h := newHarness(t, Config{DisableICC: true})
	gw := h.endpoint(macG, PortConfig{Name: "gw", Gateway: true})
	e1 := h.endpoint(macA, PortConfig{Name: "e1"})
	e2 := h.endpoint(macB, PortConfig{Name: "e2"})

	bcast1 := eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB))
	bcast2 := eth(Broadcast, macB, etherTypeARP, arp(macB, ipB, ipA))
	bcastG := eth(Broadcast, macG, etherTypeARP, arp(macG, netip.MustParseAddr("172.17.0.1"), ipA))
	e1toE2 := eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil))
	e1toG := eth(macG, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil))
	gToE1 := eth(macA, macG, etherTypeIPv4, ipv4(ipB, ipA, 17, nil))
	e1toX := eth(macX, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil))

	steps := []struct {
		name         string
		icc          bool
		from         *endpoint
		frame        []byte
		toGw, toE1   bool
		toE2         bool
		wantE1DropIC uint64
	}{
		{"endpoint broadcast reaches only the gateway", false, e1, bcast1, true, false, false, 0},
		{"other endpoint broadcast reaches only the gateway", false, e2, bcast2, true, false, false, 0},
		{"unicast between endpoints is dropped", false, e1, e1toE2, false, false, false, 1},
		{"gateway broadcast reaches everyone", false, gw, bcastG, false, true, true, 1},
		{"endpoint unicast to the gateway passes", false, e1, e1toG, true, false, false, 1},
		{"gateway unicast to an endpoint passes", false, gw, gToE1, false, true, false, 1},
		{"unknown unicast floods to the gateway only", false, e1, e1toX, true, false, false, 1},
		{"ICC on again: unicast between endpoints passes", true, e1, e1toE2, false, false, true, 1},
		{"ICC on again: broadcast reaches everyone", true, e1, bcast1, true, false, true, 1},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.t = t
			h.s.SetICC(st.icc)
			st.from.send(st.frame)
			h.sync()
			for _, dst := range []struct {
				e    *endpoint
				gets bool
			}{{gw, st.toGw}, {e1, st.toE1}, {e2, st.toE2}} {
				if dst.gets {
					dst.e.expect(st.frame)
				} else {
					dst.e.expect()
				}
			}
			if got := e1.att.Stats().DropICC; got != st.wantE1DropIC {
				t.Errorf("e1 DropICC = %d, want %d", got, st.wantE1DropIC)
			}
		})
	}
}

func TestMalformedInput(t *testing.T) {
	tests := []struct {
		name  string
		hdr   VnetHdr
		frame []byte
	}{
		{"shorter than an Ethernet header", VnetHdr{}, make([]byte, 13)},
		{"multicast source MAC", VnetHdr{}, eth(macB, Broadcast, etherTypeIPv4, ipv4(ipA, ipB, 17, nil))},
		{"checksum offset beyond the frame", VnetHdr{Flags: VnetFlagNeedsCsum, CsumStart: 30, CsumOffset: 16}, eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil))},
		{"GSO frame that is not TCP", VnetHdr{GSOType: GSOTCPv4, GSOSize: 100}, eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, make([]byte, 300)))},
		{"UDP GSO", VnetHdr{GSOType: GSOUDPL4, GSOSize: 100}, eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, make([]byte, 300)))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			a := h.endpoint(macA, PortConfig{Name: "a", Offloads: true})
			b := h.endpoint(macB, PortConfig{Name: "b", Offloads: true})
			a.sendHdr(tt.hdr, tt.frame)
			h.sync()
			b.expect()
			if got := a.att.Stats(); got.DropMalformed != 1 || got.RxFrames != 1 {
				t.Errorf("a: RxFrames, DropMalformed = %d, %d; want 1, 1", got.RxFrames, got.DropMalformed)
			}
		})
	}
}

func TestStats(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.endpoint(macA, PortConfig{Name: "a"})
	b := h.endpoint(macB, PortConfig{Name: "b"})
	f1 := eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB))
	f2 := eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, make([]byte, 100)))
	a.send(f1)
	a.send(f2)
	h.sync()
	b.expect(f1, f2)
	a.received()
	waitFor(t, "tx counters", func() bool { return b.att.Stats().TxFrames == 3 && a.att.Stats().TxFrames == 1 })
	// b has written the marker too: three frames.
	want := PortStats{TxFrames: 3, TxBytes: uint64(len(f1) + len(f2) + ethHdrLen + 4)}
	if diff := cmp.Diff(want, b.att.Stats()); diff != "" {
		t.Errorf("b stats (-want +got):\n%s", diff)
	}
	want = PortStats{RxFrames: 2, RxBytes: uint64(len(f1) + len(f2)), TxFrames: 1, TxBytes: ethHdrLen + 4}
	if diff := cmp.Diff(want, a.att.Stats()); diff != "" {
		t.Errorf("a stats (-want +got):\n%s", diff)
	}
	if got := a.att.Name(); got != "a" {
		t.Errorf("Name() = %q, want a", got)
	}
	var names []string
	for _, p := range h.s.Ports() {
		names = append(names, p.Name())
	}
	if diff := cmp.Diff([]string{"probe", "a", "b"}, names); diff != "" {
		t.Errorf("Ports() names (-want +got):\n%s", diff)
	}
}

// portGoroutines counts the switch's per-port goroutines still running.
func portGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "usernet/switch.(*Attachment).readLoop") || strings.Contains(g, "usernet/switch.(*Attachment).writeLoop") {
			n++
		}
	}
	return n
}

func TestDetach(t *testing.T) {
	// Every earlier test closed its switch; wait out their goroutines' exit.
	waitFor(t, "earlier tests' port goroutines to exit", func() bool { return portGoroutines() == 0 })
	const before = 0
	h := newHarness(t, Config{})
	a := h.endpoint(macA, PortConfig{Name: "a"})
	b := h.endpoint(macB, PortConfig{Name: "b"})
	a.send(eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB)))
	b.send(eth(Broadcast, macB, etherTypeARP, arp(macB, ipB, ipA)))
	h.sync()
	if got, want := portGoroutines()-before, 5; got != want { // probe writer + 2 readers + 2 writers
		t.Fatalf("per-port goroutines after attaching = %d, want %d", got, want)
	}

	a.att.Detach()
	a.att.Detach() // a second call is harmless
	// Detach has waited for the goroutines' work; give them the moment
	// they need to return after signalling, as goleak does.
	waitFor(t, "a's goroutines to exit", func() bool { return portGoroutines()-before == 3 })
	if _, ok := h.s.Lookup(macA); ok {
		t.Errorf("Lookup(a) after Detach: still found")
	}
	if _, ok := h.s.Lookup(macB); !ok {
		t.Errorf("Lookup(b) after detaching a: not found")
	}
	if err := a.far.Send(VnetHdr{}, numbered(1)); err == nil {
		t.Errorf("Send on the far end of a detached pipe succeeded; Detach did not close the port")
	}
	f := frameOf(eth(macB, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, nil)))
	f.IncRef()
	a.att.Input([]*Frame{f})
	if got := f.refs.Load(); got != 1 {
		t.Errorf("Input on a detached port kept a reference: refs = %d, want 1", got)
	}
	f.DecRef()

	h.s.Close()
	waitFor(t, "all port goroutines to exit", func() bool { return portGoroutines() == before })
	if got := len(h.s.Ports()); got != 0 {
		t.Errorf("Ports() after Close has %d ports", got)
	}
}

func TestDetachReleasesQueuedFrames(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	gate := newGatePort()
	slow, err := s.Attach(gate, PortConfig{Name: "slow", QueueLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.Attach(sink{}, PortConfig{Name: "in"})
	if err != nil {
		t.Fatal(err)
	}
	in.Input([]*Frame{frameOf(numbered(0))})
	<-gate.entered
	var held []*Frame
	for i := 1; i <= 3; i++ {
		f := frameOf(numbered(i))
		f.IncRef() // the test's own reference, to watch the switch's go
		held = append(held, f)
		in.Input([]*Frame{f})
	}
	done := make(chan struct{})
	go func() {
		slow.Detach()
		close(done)
	}()
	close(gate.release)
	<-done
	for i, f := range held {
		if got := f.refs.Load(); got != 1 {
			t.Errorf("frame %d: refs after Detach = %d, want 1 (the test's)", i+1, got)
		}
		f.DecRef()
	}
	gate.mu.Lock()
	closed := gate.closed
	gate.mu.Unlock()
	if !closed {
		t.Errorf("Detach did not Close the port")
	}
}
