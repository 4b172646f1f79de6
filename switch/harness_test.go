package vswitch

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The harness attaches endpoints (pipe ports whose far end the test
// drives) and a probe: an Input-only Gateway port that sends marker
// broadcasts. Because frames from one Input call reach each destination
// in order, and because the harness first waits until every endpoint's
// reader has handed the switch everything the test sent, an endpoint that
// reads the marker has seen every frame the switch was going to give it:
// "nothing else arrived" is then a fact, not a timeout.

const etherTypeMarker = 0x88b5 // IEEE local experimental

// waitLimit bounds every wait in these tests; hitting it is a failure
// (something hung), never an expected outcome.
const waitLimit = 10 * time.Second

type harness struct {
	t      *testing.T
	s      *Switch
	probe  *Attachment
	eps    []*endpoint
	marker uint32
}

type endpoint struct {
	h    *harness
	mac  MAC
	far  *PipePort // the test's end
	att  *Attachment
	sent uint64
}

// sink is an Input-only port that discards what it is given.
type sink struct{}

func (sink) WriteFrames([]*Frame) error { return nil }
func (sink) Close() error               { return nil }

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	s := New(cfg)
	t.Cleanup(s.Close)
	probe, err := s.Attach(sink{}, PortConfig{Name: "probe", Gateway: true})
	if err != nil {
		t.Fatalf("Attach(probe): %v", err)
	}
	return &harness{t: t, s: s, probe: probe}
}

// endpoint attaches a new pipe port; mac is what the test sends from.
func (h *harness) endpoint(mac MAC, cfg PortConfig) *endpoint {
	h.t.Helper()
	near, far := NewPipe(cfg.Offloads)
	att, err := h.s.Attach(near, cfg)
	if err != nil {
		h.t.Fatalf("Attach(%s): %v", cfg.Name, err)
	}
	e := &endpoint{h: h, mac: mac, far: far, att: att}
	h.eps = append(h.eps, e)
	return e
}

func (e *endpoint) send(frame []byte) { e.sendHdr(VnetHdr{}, frame) }

func (e *endpoint) sendHdr(hdr VnetHdr, frame []byte) {
	e.h.t.Helper()
	if err := e.far.Send(hdr, frame); err != nil {
		e.h.t.Fatalf("%s: Send: %v", e.att.Name(), err)
	}
	e.sent++
}

// sync waits until the switch has taken in every frame sent so far and
// then floods a marker to every port.
func (h *harness) sync() {
	h.t.Helper()
	for _, e := range h.eps {
		waitFor(h.t, e.att.Name()+" rx", func() bool { return e.att.Stats().RxFrames >= e.sent })
	}
	h.marker++
	payload := binary.BigEndian.AppendUint32(nil, h.marker)
	f := NewFrame(ethHdrLen + len(payload))
	copy(f.Data, eth(Broadcast, macP, etherTypeMarker, payload))
	h.probe.Input([]*Frame{f})
}

// received returns the frames that reached e before the latest marker.
func (e *endpoint) received() [][]byte {
	e.h.t.Helper()
	var got [][]byte
	for {
		_, data := e.next()
		if binary.BigEndian.Uint16(data[12:14]) == etherTypeMarker {
			if binary.BigEndian.Uint32(data[ethHdrLen:]) == e.h.marker {
				return got
			}
			continue // an older marker this endpoint was not asked about
		}
		got = append(got, data)
	}
}

// expect checks that exactly want reached e before the latest marker.
func (e *endpoint) expect(want ...[]byte) {
	e.h.t.Helper()
	if want == nil {
		want = [][]byte{}
	}
	got := e.received()
	if got == nil {
		got = [][]byte{}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		e.h.t.Errorf("%s received (-want +got):\n%s", e.att.Name(), diff)
	}
}

// next reads one frame from the far end of e.
func (e *endpoint) next() (VnetHdr, []byte) {
	e.h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	hdr, data, err := e.far.Receive(ctx)
	if err != nil {
		e.h.t.Fatalf("%s: Receive: %v", e.att.Name(), err)
	}
	return hdr, data
}

// waitFor polls cond until it holds, failing the test after waitLimit.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// fakeClock is a settable clock for aging tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
