package nat

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func key(src, dst string) flowKey {
	return flowKey{Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}
}

// TestFlowTableExpiry checks the timeout rules: 30 s until a reply and
// for a query answered, 180 s for a conversation (replied, and active 2 s
// or more after its first datagram), 10 s for port 53 whatever happened,
// always counted from the last datagram in either direction.
func TestFlowTableExpiry(t *testing.T) {
	type event struct {
		at    time.Duration // since t0
		reply bool          // received (else sent)
	}
	tests := []struct {
		name   string
		k      flowKey
		events []event
		alive  []time.Duration // still present when expire runs at these offsets
		gone   time.Duration   // expired by expire at this offset
	}{
		{
			name:  "unreplied expires after 30s",
			k:     key("172.17.0.2:4000", "192.0.2.1:9"),
			alive: []time.Duration{29 * time.Second},
			gone:  30 * time.Second,
		},
		{
			name:   "outbound traffic refreshes unreplied flow",
			k:      key("172.17.0.2:4000", "192.0.2.1:9"),
			events: []event{{at: 20 * time.Second}},
			alive:  []time.Duration{30 * time.Second, 49 * time.Second},
			gone:   50 * time.Second,
		},
		{
			name:   "answered query expires 30s after its answer",
			k:      key("172.17.0.2:4000", "192.0.2.1:123"),
			events: []event{{at: time.Second, reply: true}},
			alive:  []time.Duration{30 * time.Second},
			gone:   31 * time.Second,
		},
		{
			name:   "conversation lives 180s from last datagram",
			k:      key("172.17.0.2:4000", "192.0.2.1:123"),
			events: []event{{at: time.Second, reply: true}, {at: 2 * time.Second}},
			alive:  []time.Duration{31 * time.Second, 181 * time.Second},
			gone:   182 * time.Second,
		},
		{
			name:   "late first reply makes a conversation",
			k:      key("172.17.0.2:4000", "192.0.2.1:123"),
			events: []event{{at: 5 * time.Second, reply: true}},
			alive:  []time.Duration{184 * time.Second},
			gone:   185 * time.Second,
		},
		{
			name:   "replied flow refreshed by later send",
			k:      key("172.17.0.2:4000", "192.0.2.1:123"),
			events: []event{{at: time.Second, reply: true}, {at: 100 * time.Second}},
			alive:  []time.Duration{279 * time.Second},
			gone:   280 * time.Second,
		},
		{
			name:  "dns unreplied 10s",
			k:     key("172.17.0.2:4000", "192.0.2.53:53"),
			alive: []time.Duration{9 * time.Second},
			gone:  10 * time.Second,
		},
		{
			name:   "dns replied still 10s",
			k:      key("172.17.0.2:4000", "192.0.2.53:53"),
			events: []event{{at: 2 * time.Second, reply: true}},
			alive:  []time.Duration{11 * time.Second},
			gone:   12 * time.Second,
		},
		{
			name:  "source port 53 is not dns",
			k:     key("172.17.0.2:53", "192.0.2.1:9"),
			alive: []time.Duration{10 * time.Second, 29 * time.Second},
			gone:  30 * time.Second,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := newFlowTable[string](10)
			if _, err := tab.add(tc.k, "v", t0); err != nil {
				t.Fatalf("add: %v", err)
			}
			for _, ev := range tc.events {
				var ok bool
				if ev.reply {
					ok = tab.received(tc.k, t0.Add(ev.at))
				} else {
					ok = tab.sent(tc.k, t0.Add(ev.at))
				}
				if !ok {
					t.Fatalf("event at %v: flow missing", ev.at)
				}
			}
			for _, at := range tc.alive {
				if got := tab.expire(t0.Add(at)); len(got) != 0 {
					t.Fatalf("expire(t0+%v) = %v, want nothing", at, got)
				}
			}
			if got, want := tab.expire(t0.Add(tc.gone)), []string{"v"}; !cmp.Equal(got, want) {
				t.Fatalf("expire(t0+%v) = %v, want %v", tc.gone, got, want)
			}
			if tab.len() != 0 || tab.sent(tc.k, t0.Add(tc.gone)) {
				t.Fatalf("flow still present after expiry")
			}
		})
	}
}

// TestFlowTableFull: a full table drops the quietest flow that is not a
// conversation to make room, and refuses a newcomer when every flow is
// one; a key already present is refused whatever the room.
func TestFlowTableFull(t *testing.T) {
	tab := newFlowTable[string](3)
	conv := key("10.0.0.2:1", "192.0.2.1:9")
	older := key("10.0.0.2:2", "192.0.2.1:9")
	newer := key("10.0.0.2:3", "192.0.2.1:9")
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, f := range []struct {
		k flowKey
		v string
	}{{conv, "conv"}, {older, "older"}, {newer, "newer"}} {
		if dropped, err := tab.add(f.k, f.v, t0); err != nil || dropped != "" {
			t.Fatalf("add %s = %q, %v", f.v, dropped, err)
		}
	}
	tab.received(conv, at(time.Second))
	tab.sent(conv, at(3*time.Second)) // a conversation now
	tab.received(older, at(time.Second))
	tab.received(newer, at(1500*time.Millisecond))
	if _, err := tab.add(conv, "again", at(4*time.Second)); !errors.Is(err, errFlowExist) {
		t.Fatalf("add conv again: err = %v, want errFlowExist", err)
	}

	// c differs from older only in the destination: a separate flow
	// (full 5-tuple key), taking the place of the quietest query.
	c := key("10.0.0.2:2", "192.0.2.2:9")
	if dropped, err := tab.add(c, "c", at(4*time.Second)); err != nil || dropped != "older" {
		t.Fatalf("add c = %q, %v; want older dropped", dropped, err)
	}
	if _, ok := tab.get(older); ok {
		t.Fatal("dropped flow still in the table")
	}
	if dropped, err := tab.add(older, "older2", at(5*time.Second)); err != nil || dropped != "newer" {
		t.Fatalf("add older2 = %q, %v; want newer dropped", dropped, err)
	}
	if d, ok := tab.deadline(c); !ok || !d.Equal(at(4*time.Second).Add(udpUnrepliedTimeout)) {
		t.Fatalf("deadline(c) = %v, %v", d, ok)
	}
	if v, ok := tab.remove(c); !ok || v != "c" {
		t.Fatalf("remove c = %v, %v", v, ok)
	}

	// Only conversations: no room.
	full := newFlowTable[string](1)
	full.add(conv, "conv", t0)
	full.received(conv, at(time.Second))
	full.sent(conv, at(2*time.Second))
	if dropped, err := full.add(c, "c", at(3*time.Second)); !errors.Is(err, errTableFull) || dropped != "" {
		t.Fatalf("add to a table of conversations = %q, %v; want errTableFull", dropped, err)
	}

	got := tab.removeAll()
	if diff := cmp.Diff([]string{"conv", "older2"}, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Fatalf("removeAll (-want +got):\n%s", diff)
	}
	if tab.len() != 0 {
		t.Fatalf("len after removeAll = %d", tab.len())
	}
}

// TestFlowTableQuietestMatchesScan drives a small table with random
// datagrams, removals and expiry on a clock that only moves forward, and
// checks that every flow a full table drops is the one a scan of all
// flows would have picked: the non-stream flow with the oldest last
// datagram.
func TestFlowTableQuietestMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := newFlowTable[int](16)
	now := t0
	keys := make([]flowKey, 64)
	for i := range keys {
		keys[i] = key(fmt.Sprintf("10.0.0.2:%d", 1000+i), "192.0.2.1:9")
	}
	drops := 0
	for step := range 5000 {
		now = now.Add(time.Duration(1+rng.IntN(300)) * time.Millisecond)
		k := keys[rng.IntN(len(keys))]
		switch op := rng.IntN(10); {
		case op < 5:
			if _, ok := tab.get(k); ok {
				break
			}
			var want flowKey
			var wantLast time.Time
			full := tab.len() >= tab.max
			for fk, e := range tab.flows {
				if !e.stream && (wantLast.IsZero() || e.last.Before(wantLast)) {
					want, wantLast = fk, e.last
				}
			}
			dropped, err := tab.add(k, step, now)
			switch {
			case !full && (err != nil || dropped != 0):
				t.Fatalf("step %d: add to a table with room = %d, %v", step, dropped, err)
			case full && wantLast.IsZero() && !errors.Is(err, errTableFull):
				t.Fatalf("step %d: add to a table of streams = %d, %v", step, dropped, err)
			case full && !wantLast.IsZero():
				if _, still := tab.get(want); err != nil || still {
					t.Fatalf("step %d: full table kept %v (last %v), the quietest query; err %v", step, want, wantLast, err)
				}
				drops++
			}
		case op < 7:
			tab.sent(k, now)
		case op < 9:
			tab.received(k, now)
		default:
			if rng.IntN(4) == 0 {
				tab.expire(now)
			} else {
				tab.remove(k)
			}
		}
	}
	if drops == 0 {
		t.Fatal("the table never dropped a flow: the test did not test")
	}
	tab.removeAll()
	if tab.queries.next != &tab.queries || tab.queries.prev != &tab.queries {
		t.Fatal("queries list not empty after removeAll")
	}
}
