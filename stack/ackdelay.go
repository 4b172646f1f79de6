package stack

// Delayed pure ACKs.
//
// gVisor acknowledges every batch of segments it receives at once, with a
// pure ACK written before the reader of the data even runs. A TCP stack in
// a kernel would delay that ACK (RFC 1122 4.2.3.2), and here the immediate
// one is expensive twice over: writing a frame into a TAP runs the guest's
// receive path inside our write(2), and it happens on the gVisor goroutine
// that has just woken the relay, so the request a guest sent waits for the
// acknowledgement of that request before it is passed on. On a
// request/response flow the answer, which carries the same
// acknowledgement, follows a few tens of microseconds later.
//
// So the gateway's link endpoint holds pure ACKs for up to ackDelay,
// following the rules of a delayed-ACK receiver:
//
//  1. Only a pure ACK may be held: flags exactly ACK, no payload, no SACK
//     blocks (a duplicate ACK with SACK drives the guest's fast
//     retransmit and must not wait or merge).
//  2. Any later segment of the same connection that carries data, SYN,
//     FIN or RST supersedes the held ACK, which is dropped: its
//     acknowledgement number can only be newer.
//  3. A second pure ACK that acknowledges more than the held one is sent
//     at once and the held one dropped, so a bulk sender still gets an
//     ACK for at least every second batch ("ACK every second segment").
//  4. A pure ACK acknowledging the same byte as the held one (a window
//     update or a duplicate ACK) is sent at once, after the held one, so
//     the guest sees both, in order.
//  5. Whatever is still held after ackDelay is sent by a timer. Go timers
//     below a millisecond may fire up to a millisecond late on an idle
//     process; that bounds the added delay, far below the 40 ms a kernel
//     peer's delayed ACK costs.
//  6. At most maxHeldACKs are held; beyond that ACKs go out at once.

import (
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	vswitch "github.com/usernet/usernet/switch"
)

// ackDelay is how long a pure ACK may wait for a segment to ride on (5).
const ackDelay = 200 * time.Microsecond

// maxHeldACKs bounds the ACKs held at once (6): one per connection with a
// request in flight, so a handful in practice.
const maxHeldACKs = 64

// flowKey names one direction of a TCP connection: addresses as the
// network header spells them (4 or 16 bytes, zero-padded) and ports.
type flowKey struct {
	src, dst     [16]byte
	sport, dport uint16
}

// ackKind classifies an outbound TCP segment for the holder.
type ackKind uint8

const (
	ackOther    ackKind = iota // data, SYN, FIN or RST: supersedes a held ACK (2)
	ackPure                    // pure ACK that may be held (1)
	ackPureSACK                // pure ACK with SACK blocks: never held (1, 4)
)

// tcpSegment is what the holder needs to know of an outbound segment.
type tcpSegment struct {
	key  flowKey
	kind ackKind
	ack  uint32
}

// classify parses pkt, an outbound packet with its headers pushed. It
// reports false for anything but TCP over IPv4 or IPv6.
func classify(pkt *gstack.PacketBuffer) (tcpSegment, bool) {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return tcpSegment{}, false
	}
	var seg tcpSegment
	nh := pkt.NetworkHeader().Slice()
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		if len(nh) < header.IPv4MinimumSize {
			return tcpSegment{}, false
		}
		copy(seg.key.src[:], nh[12:16])
		copy(seg.key.dst[:], nh[16:20])
	case header.IPv6ProtocolNumber:
		if len(nh) < header.IPv6MinimumSize {
			return tcpSegment{}, false
		}
		copy(seg.key.src[:], nh[8:24])
		copy(seg.key.dst[:], nh[24:40])
	default:
		return tcpSegment{}, false
	}
	th := header.TCP(pkt.TransportHeader().Slice())
	if len(th) < header.TCPMinimumSize {
		return tcpSegment{}, false
	}
	seg.key.sport, seg.key.dport = th.SourcePort(), th.DestinationPort()
	seg.ack = th.AckNumber()
	switch {
	case th.Flags() != header.TCPFlagAck || pkt.Data().Size() > 0:
		seg.kind = ackOther
	case hasSACK(th):
		seg.kind = ackPureSACK
	default:
		seg.kind = ackPure
	}
	return seg, true
}

// hasSACK reports whether th's options carry a SACK block (kind 5).
func hasSACK(th header.TCP) bool {
	off := int(th.DataOffset())
	if off <= header.TCPMinimumSize || off > len(th) {
		return false
	}
	opts := th[header.TCPMinimumSize:off]
	for i := 0; i < len(opts); {
		switch kind := opts[i]; kind {
		case header.TCPOptionEOL:
			return false
		case header.TCPOptionNOP:
			i++
		default:
			if kind == header.TCPOptionSACK {
				return true
			}
			if i+1 >= len(opts) || opts[i+1] < 2 {
				return false
			}
			i += int(opts[i+1])
		}
	}
	return false
}

// heldACK is one held frame.
type heldACK struct {
	key flowKey
	ack uint32
	f   *vswitch.Frame
	due time.Time // when the timer must have sent it
}

// ackHolder holds pure ACKs for one gateway. It is safe for concurrent
// use: gVisor sends from many goroutines.
type ackHolder struct {
	// send transmits frames the holder releases, taking their references;
	// the timer calls it from its own goroutine.
	send func([]*vswitch.Frame)
	// now is time.Now; tests replace it.
	now func() time.Time

	// n mirrors len(held) so that segments of connections with nothing
	// held skip the lock.
	n atomic.Int32

	mu     sync.Mutex
	held   []heldACK // oldest first
	timer  *time.Timer
	armed  bool // timer set for held[0].due
	closed bool

	superseded atomic.Uint64 // held ACKs dropped because a later segment carried them
}

func newACKHolder(send func([]*vswitch.Frame)) *ackHolder {
	h := &ackHolder{send: send, now: time.Now}
	h.timer = time.AfterFunc(time.Hour, h.flush)
	h.timer.Stop()
	return h
}

// admit decides the fate of an outbound TCP segment whose frame is f. It
// returns the frames to send now, in order, appended to out: possibly a
// held ACK that must precede f (4), and f itself unless it is now held.
func (h *ackHolder) admit(seg tcpSegment, f *vswitch.Frame, out []*vswitch.Frame) []*vswitch.Frame {
	if h.n.Load() == 0 && seg.kind != ackPure {
		return append(out, f)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	i := h.find(seg.key)
	if i < 0 {
		if seg.kind != ackPure || h.closed || len(h.held) >= maxHeldACKs {
			return append(out, f)
		}
		h.held = append(h.held, heldACK{key: seg.key, ack: seg.ack, f: f, due: h.now().Add(ackDelay)})
		h.n.Store(int32(len(h.held)))
		if !h.armed {
			h.armed = true
			h.timer.Reset(ackDelay)
		}
		return out
	}
	old := h.held[i]
	h.remove(i)
	if seg.kind == ackPureSACK || (seg.kind == ackPure && seg.ack == old.ack) {
		return append(out, old.f, f) // (4)
	}
	old.f.DecRef() // (2), (3)
	h.superseded.Add(1)
	return append(out, f)
}

func (h *ackHolder) find(k flowKey) int {
	for i := range h.held {
		if h.held[i].key == k {
			return i
		}
	}
	return -1
}

// remove deletes held[i], keeping the order of the rest (oldest first,
// which is the order their deadlines come in). With nothing left held the
// timer is stopped, so that a later hold gets its full delay: on a
// request/response flow nearly every held ACK is superseded, and the
// timer need never fire.
func (h *ackHolder) remove(i int) {
	last := len(h.held) - 1
	copy(h.held[i:], h.held[i+1:])
	h.held[last] = heldACK{} // do not pin the frame
	h.held = h.held[:last]
	h.n.Store(int32(last))
	if last == 0 && h.armed {
		h.armed = false
		h.timer.Stop()
	}
}

// flush is the timer: it sends the ACKs that are due (5) and sets the
// timer again for the next one.
func (h *ackHolder) flush() {
	h.mu.Lock()
	now := h.now()
	n := 0
	for n < len(h.held) && !h.held[n].due.After(now) {
		n++
	}
	var frames []*vswitch.Frame
	if n > 0 {
		frames = make([]*vswitch.Frame, n)
		for i := range frames {
			frames[i] = h.held[i].f
		}
		rest := copy(h.held, h.held[n:])
		clear(h.held[rest:])
		h.held = h.held[:rest]
		h.n.Store(int32(rest))
	}
	h.armed = len(h.held) > 0 && !h.closed
	if h.armed {
		h.timer.Reset(h.held[0].due.Sub(now))
	}
	h.mu.Unlock()
	if len(frames) > 0 {
		h.send(frames)
	}
}

// close drops whatever is held and stops holding: the gateway is going
// away and nothing it holds can be delivered any more.
func (h *ackHolder) close() {
	h.mu.Lock()
	h.closed = true
	h.armed = false
	h.timer.Stop()
	held := h.held
	h.held = nil
	h.n.Store(0)
	h.mu.Unlock()
	for _, a := range held {
		a.f.DecRef()
	}
}
