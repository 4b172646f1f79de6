package nat

import (
	"errors"
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

// TestFlowTableExpiry checks the timeout rules: 30 s until a reply, 180 s
// once replied, 10 s for port 53 whatever happened, always counted from the
// last datagram in either direction.
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
			name:   "replied lives 180s from last datagram",
			k:      key("172.17.0.2:4000", "192.0.2.1:123"),
			events: []event{{at: time.Second, reply: true}},
			alive:  []time.Duration{30 * time.Second, 180 * time.Second},
			gone:   181 * time.Second,
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
			if err := tab.add(tc.k, "v", t0); err != nil {
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

func TestFlowTableCapAndDuplicates(t *testing.T) {
	tab := newFlowTable[int](2)
	a, b, c := key("10.0.0.2:1", "192.0.2.1:9"), key("10.0.0.2:2", "192.0.2.1:9"), key("10.0.0.2:1", "192.0.2.2:9")
	if err := tab.add(a, 1, t0); err != nil {
		t.Fatalf("add a: %v", err)
	}
	if err := tab.add(a, 9, t0); !errors.Is(err, errFlowExist) {
		t.Fatalf("add a again: err = %v, want errFlowExist", err)
	}
	if err := tab.add(b, 2, t0); err != nil {
		t.Fatalf("add b: %v", err)
	}
	// c differs from a only in the destination: a separate flow (full
	// 5-tuple key), refused because the table is full.
	if err := tab.add(c, 3, t0); !errors.Is(err, errTableFull) {
		t.Fatalf("add c: err = %v, want errTableFull", err)
	}
	if v, ok := tab.remove(a); !ok || v != 1 {
		t.Fatalf("remove a = %v, %v", v, ok)
	}
	if err := tab.add(c, 3, t0); err != nil {
		t.Fatalf("add c after remove: %v", err)
	}
	if d, ok := tab.deadline(c); !ok || !d.Equal(t0.Add(udpUnrepliedTimeout)) {
		t.Fatalf("deadline(c) = %v, %v", d, ok)
	}
	got := tab.removeAll()
	if diff := cmp.Diff([]int{2, 3}, got, cmpopts.SortSlices(func(a, b int) bool { return a < b })); diff != "" {
		t.Fatalf("removeAll (-want +got):\n%s", diff)
	}
}
