package nat

import (
	"errors"
	"net/netip"
	"time"
)

// UDP flow timeouts, after Linux conntrack (nf_conntrack_proto_udp.c). A
// flow that never saw a reply is most likely a probe or a lost query, and
// one that saw its reply within udpStreamAfter of its first datagram and
// nothing since is a query answered: both go after 30 s. A flow still
// carrying datagrams, with a reply seen, udpStreamAfter or more after its
// first is a conversation (a stream) and stays 180 s (passt). DNS flows go
// after 10 s whatever happened (libslirp's SO_EXPIREFAST): resolvers pick
// a fresh source port per query.
//
// Each flow holds a host socket, so the table is small (a few thousand)
// where conntrack's holds hundreds of thousands; a client that opens
// flows faster than they expire fills it. A full table makes room as
// conntrack's early drop does, by dropping the flow that has been quiet
// longest among those that are not streams (add): clients that send one
// query per source port (NTP, SNMP, DNS to other ports, statsd) go on
// working at any rate, and conversations are never cut short for them.
const (
	udpUnrepliedTimeout = 30 * time.Second
	udpStreamTimeout    = 180 * time.Second
	udpDNSTimeout       = 10 * time.Second
	udpStreamAfter      = 2 * time.Second
)

var (
	errTableFull = errors.New("flow table full")
	errFlowExist = errors.New("flow already exists")
)

// flowKey is a UDP flow's 5-tuple: the protocol is implied (the table
// holds UDP only), Src is the side that sent the first datagram (the guest
// for outbound NAT, the host client for a published port) and Dst the
// side it was sent to. Both directions of a conversation share one key.
type flowKey struct {
	Src, Dst netip.AddrPort
}

// flowEntry is one flow's bookkeeping and the caller's value for it.
type flowEntry[V any] struct {
	key     flowKey
	value   V
	first   time.Time // the datagram that made the flow
	last    time.Time // last datagram in either direction
	replied bool      // a datagram went Dst -> Src
	stream  bool      // replied, and active udpStreamAfter after first

	// prev and next link a flow that is not a stream into its table's
	// queries list; both are nil for a stream.
	prev, next *flowEntry[V]
}

// flowTable is the UDP flow table: a plain data structure with no
// goroutines and no clock of its own. Every method takes the time of the
// event it records; the caller serializes calls (it is not safe for
// concurrent use) and decides when to call expire. V is whatever the
// caller keeps per flow (its sockets); the table never looks inside.
type flowTable[V any] struct {
	max   int
	flows map[flowKey]*flowEntry[V]
	// queries is the head of a circular list of the flows that are not
	// streams, quietest first, so that add finds the one to drop at once:
	// a scan of a full table for it cost more than the rest of a new
	// flow at a few thousand a second.
	queries flowEntry[V]
}

// newFlowTable returns an empty table holding at most max flows.
func newFlowTable[V any](max int) *flowTable[V] {
	t := &flowTable[V]{max: max, flows: make(map[flowKey]*flowEntry[V])}
	t.queries.prev, t.queries.next = &t.queries, &t.queries
	return t
}

// pushQuery puts e at the end of the queries list, as the latest active.
func (t *flowTable[V]) pushQuery(e *flowEntry[V]) {
	e.prev, e.next = t.queries.prev, &t.queries
	e.prev.next, t.queries.prev = e, e
}

// unlink takes e out of the queries list if it is in it.
func (t *flowTable[V]) unlink(e *flowEntry[V]) {
	if e.prev != nil {
		e.prev.next, e.next.prev = e.next, e.prev
		e.prev, e.next = nil, nil
	}
}

// touch records a datagram of e's, in either direction, at time at and
// keeps the queries list in order: e moves to its end, or leaves it on
// becoming a stream.
func (t *flowTable[V]) touch(e *flowEntry[V], at time.Time) {
	if at.After(e.last) {
		e.last = at
	}
	if e.replied && at.Sub(e.first) >= udpStreamAfter {
		e.stream = true
	}
	t.unlink(e)
	if !e.stream {
		t.pushQuery(e)
	}
}

// add inserts a new flow created by a datagram Src -> Dst at time at. It
// fails with errFlowExist when k is already present. When the table holds
// max flows it drops the flow quiet longest among those that are not
// streams and returns its value, for the caller to close; it fails with
// errTableFull when every flow is a stream.
func (t *flowTable[V]) add(k flowKey, v V, at time.Time) (dropped V, err error) {
	if _, ok := t.flows[k]; ok {
		return dropped, errFlowExist
	}
	if len(t.flows) >= t.max {
		quietest := t.queries.next
		if quietest == &t.queries {
			return dropped, errTableFull
		}
		t.unlink(quietest)
		delete(t.flows, quietest.key)
		dropped = quietest.value
	}
	e := &flowEntry[V]{key: k, value: v, first: at, last: at}
	t.flows[k] = e
	t.pushQuery(e)
	return dropped, nil
}

// get returns k's value and reports whether the flow exists.
func (t *flowTable[V]) get(k flowKey) (V, bool) {
	e, ok := t.flows[k]
	if !ok {
		var zero V
		return zero, false
	}
	return e.value, true
}

// sent records a datagram Src -> Dst at time at and reports whether the
// flow exists.
func (t *flowTable[V]) sent(k flowKey, at time.Time) bool {
	e, ok := t.flows[k]
	if ok {
		t.touch(e, at)
	}
	return ok
}

// received records a datagram Dst -> Src (a reply) at time at and reports
// whether the flow exists.
func (t *flowTable[V]) received(k flowKey, at time.Time) bool {
	e, ok := t.flows[k]
	if !ok {
		return false
	}
	e.replied = true
	t.touch(e, at)
	return true
}

// deadline returns the time at which k expires if nothing more is seen,
// and reports whether the flow exists.
func (t *flowTable[V]) deadline(k flowKey) (time.Time, bool) {
	e, ok := t.flows[k]
	if !ok {
		return time.Time{}, false
	}
	return e.last.Add(flowTimeout(k, e.stream)), true
}

// flowTimeout is the idle time after which a flow expires.
func flowTimeout(k flowKey, stream bool) time.Duration {
	switch {
	case k.Dst.Port() == 53:
		return udpDNSTimeout
	case stream:
		return udpStreamTimeout
	default:
		return udpUnrepliedTimeout
	}
}

// expire removes every flow whose deadline is at or before at and returns
// their values so the caller can close them.
func (t *flowTable[V]) expire(at time.Time) []V {
	var out []V
	for k, e := range t.flows {
		if !at.Before(e.last.Add(flowTimeout(k, e.stream))) {
			out = append(out, e.value)
			t.unlink(e)
			delete(t.flows, k)
		}
	}
	return out
}

// remove deletes k and returns its value, reporting whether it was there.
func (t *flowTable[V]) remove(k flowKey) (V, bool) {
	e, ok := t.flows[k]
	if !ok {
		var zero V
		return zero, false
	}
	t.unlink(e)
	delete(t.flows, k)
	return e.value, true
}

// removeAll empties the table and returns every value.
func (t *flowTable[V]) removeAll() []V {
	out := make([]V, 0, len(t.flows))
	for k, e := range t.flows {
		out = append(out, e.value)
		t.unlink(e)
		delete(t.flows, k)
	}
	return out
}

// len returns the number of flows.
func (t *flowTable[V]) len() int { return len(t.flows) }
