package stack

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	vswitch "github.com/usernet/usernet/switch"
)

// holderHarness drives an ackHolder with named frames and a manual clock.
type holderHarness struct {
	h    *ackHolder
	now  time.Time
	mu   sync.Mutex
	sent []string // names of frames the holder sent on its own (flush)
	name map[*vswitch.Frame]string
}

func newHolderHarness(t *testing.T) *holderHarness {
	hh := &holderHarness{now: time.Unix(1000, 0), name: make(map[*vswitch.Frame]string)}
	hh.h = newACKHolder(func(frames []*vswitch.Frame) {
		hh.mu.Lock()
		defer hh.mu.Unlock()
		for _, f := range frames {
			hh.sent = append(hh.sent, hh.name[f])
			f.DecRef()
		}
	})
	hh.h.now = func() time.Time { return hh.now }
	t.Cleanup(hh.h.close)
	return hh
}

// admit passes a segment called name and returns the names of the frames
// to send now.
func (hh *holderHarness) admit(name string, seg tcpSegment) []string {
	f := vswitch.NewFrame(64)
	hh.name[f] = name
	var got []string
	for _, o := range hh.h.admit(seg, f, nil) {
		got = append(got, hh.name[o])
		o.DecRef()
	}
	return got
}

func (hh *holderHarness) flushed() []string {
	hh.mu.Lock()
	defer hh.mu.Unlock()
	s := hh.sent
	hh.sent = nil
	return s
}

var (
	flowA = flowKey{src: [16]byte{10, 0, 0, 1}, dst: [16]byte{10, 0, 0, 2}, sport: 80, dport: 40000}
	flowB = flowKey{src: [16]byte{10, 0, 0, 1}, dst: [16]byte{10, 0, 0, 3}, sport: 80, dport: 40001}
)

func pure(k flowKey, ack uint32) tcpSegment { return tcpSegment{key: k, kind: ackPure, ack: ack} }
func sackACK(k flowKey, ack uint32) tcpSegment {
	return tcpSegment{key: k, kind: ackPureSACK, ack: ack}
}
func dataSeg(k flowKey, ack uint32) tcpSegment { return tcpSegment{key: k, kind: ackOther, ack: ack} }

// TestACKHolderRules walks the rules in ackdelay.go's header, each step
// naming what must leave at once.
func TestACKHolderRules(t *testing.T) {
	type step struct {
		name string
		seg  tcpSegment
		want []string
	}
	tests := []struct {
		name           string
		steps          []step
		wantSuperseded uint64
		wantFlushed    []string // sent by the timer once everything is due
	}{
		{
			name:        "lone pure ACK waits for the timer",
			steps:       []step{{"ack1", pure(flowA, 100), nil}},
			wantFlushed: []string{"ack1"},
		},
		{
			name: "data supersedes the held ACK",
			steps: []step{
				{"ack1", pure(flowA, 100), nil},
				{"data", dataSeg(flowA, 100), []string{"data"}},
			},
			wantSuperseded: 1,
		},
		{
			name: "a newer pure ACK goes at once and replaces the held one",
			steps: []step{
				{"ack1", pure(flowA, 100), nil},
				{"ack2", pure(flowA, 200), []string{"ack2"}},
				{"ack3", pure(flowA, 300), nil},
			},
			wantSuperseded: 1,
			wantFlushed:    []string{"ack3"},
		},
		{
			name: "same acknowledgement (window update, duplicate) sends both in order",
			steps: []step{
				{"ack1", pure(flowA, 100), nil},
				{"ack1b", pure(flowA, 100), []string{"ack1", "ack1b"}},
			},
		},
		{
			name: "SACK is never held and flushes the held ACK first",
			steps: []step{
				{"sack0", sackACK(flowA, 50), []string{"sack0"}},
				{"ack1", pure(flowA, 100), nil},
				{"sack1", sackACK(flowA, 100), []string{"ack1", "sack1"}},
			},
		},
		{
			name: "flows are independent",
			steps: []step{
				{"a1", pure(flowA, 100), nil},
				{"b1", pure(flowB, 7), nil},
				{"bdata", dataSeg(flowB, 7), []string{"bdata"}},
			},
			wantSuperseded: 1,
			wantFlushed:    []string{"a1"},
		},
		{
			name:  "data with nothing held passes",
			steps: []step{{"data", dataSeg(flowA, 1), []string{"data"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hh := newHolderHarness(t)
			for _, s := range tt.steps {
				if diff := cmp.Diff(s.want, hh.admit(s.name, s.seg)); diff != "" {
					t.Errorf("admit %s: sent now (-want +got):\n%s", s.name, diff)
				}
			}
			hh.h.flush() // nothing is due yet
			if got := hh.flushed(); len(got) != 0 {
				t.Errorf("timer before the delay sent %v", got)
			}
			hh.now = hh.now.Add(ackDelay)
			hh.h.flush()
			if diff := cmp.Diff(tt.wantFlushed, hh.flushed()); diff != "" {
				t.Errorf("timer sent (-want +got):\n%s", diff)
			}
			if got := hh.h.superseded.Load(); got != tt.wantSuperseded {
				t.Errorf("superseded = %d, want %d", got, tt.wantSuperseded)
			}
			if n := hh.h.n.Load(); n != 0 {
				t.Errorf("%d ACKs still held after the timer", n)
			}
		})
	}
}

// TestACKHolderTimerOrder checks that the timer sends only what is due and
// keeps the rest for their own deadlines.
func TestACKHolderTimerOrder(t *testing.T) {
	hh := newHolderHarness(t)
	hh.admit("a1", pure(flowA, 1))
	hh.now = hh.now.Add(ackDelay / 2)
	hh.admit("b1", pure(flowB, 1))
	hh.now = hh.now.Add(ackDelay / 2)
	hh.h.flush()
	if diff := cmp.Diff([]string{"a1"}, hh.flushed()); diff != "" {
		t.Errorf("first deadline (-want +got):\n%s", diff)
	}
	hh.now = hh.now.Add(ackDelay / 2)
	hh.h.flush()
	if diff := cmp.Diff([]string{"b1"}, hh.flushed()); diff != "" {
		t.Errorf("second deadline (-want +got):\n%s", diff)
	}
}

// TestACKHolderBounds checks the cap on held ACKs and that a closed holder
// holds nothing.
func TestACKHolderBounds(t *testing.T) {
	hh := newHolderHarness(t)
	for i := range maxHeldACKs {
		k := flowA
		k.dport = uint16(i)
		if got := hh.admit("held", pure(k, 1)); got != nil {
			t.Fatalf("ACK %d sent at once (%v), want held", i, got)
		}
	}
	k := flowA
	k.dport = maxHeldACKs
	if diff := cmp.Diff([]string{"over"}, hh.admit("over", pure(k, 1))); diff != "" {
		t.Errorf("ACK over the cap (-want +got):\n%s", diff)
	}
	hh.h.close()
	if n := hh.h.n.Load(); n != 0 {
		t.Errorf("%d ACKs held after close", n)
	}
	if diff := cmp.Diff([]string{"late"}, hh.admit("late", pure(flowB, 1))); diff != "" {
		t.Errorf("ACK after close (-want +got):\n%s", diff)
	}
	if got := hh.flushed(); len(got) != 0 {
		t.Errorf("close sent %v, want them dropped", got)
	}
}

func TestHasSACK(t *testing.T) {
	tests := []struct {
		name string
		opts []byte
		want bool
	}{
		{"no options", nil, false},
		{"timestamps", []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, false},
		{"SACK permitted is not SACK", []byte{4, 2, 1, 1}, false},
		{"SACK block", []byte{1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2}, true},
		{"SACK after timestamps", []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2}, true},
		{"zero length option stops the scan", []byte{8, 0, 5, 10}, false},
		{"end of list", []byte{0, 5, 10, 0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := make(header.TCP, header.TCPMinimumSize+len(tt.opts))
			th.Encode(&header.TCPFields{DataOffset: uint8(len(th)), Flags: header.TCPFlagAck})
			copy(th[header.TCPMinimumSize:], tt.opts)
			if got := hasSACK(th); got != tt.want {
				t.Errorf("hasSACK = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestDelayedACKReachesGuest sends data to a gateway endpoint that never
// answers: the held ACK must still reach the guest (by the timer), and the
// guest must not have to retransmit.
func TestDelayedACKReachesGuest(t *testing.T) {
	ctx := testContext(t)
	accepted := make(chan TCPConn, 1)
	h := tcpHandlerFunc(func(r *TCPRequest) {
		if c, err := r.Accept(); err == nil {
			accepted <- c
		}
	})
	n := newTestNet(t, Config{TCP: h})
	g := n.addGuest(t, guestAddr, guestMAC, true)
	dst := netip.MustParseAddrPort("192.0.2.10:9")
	c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(dst), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	var srv TCPConn
	select {
	case srv = <-accepted:
		defer srv.Close()
	case <-ctx.Done():
		t.Fatal("handler never accepted")
	}
	before := g.pureACKsIn.Load()
	if _, err := c.Write([]byte("no answer expected")); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 64)
	if _, err := srv.Read(buf); err != nil {
		t.Fatalf("gateway read: %v", err)
	}
	for g.pureACKsIn.Load() == before {
		select {
		case <-ctx.Done():
			t.Fatal("the guest never received an ACK for its data")
		case <-time.After(time.Millisecond):
		}
	}
	if r := g.s.Stats().TCP.Retransmits.Value(); r != 0 {
		t.Errorf("guest retransmitted %d segments, want 0", r)
	}
}
