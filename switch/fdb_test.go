package vswitch

import (
	"testing"
	"time"
)

func TestFDBBounded(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := New(Config{Clock: clock.Now})
	defer s.Close()
	const limit = 200
	s.fdb.max = limit // before any frame: the bound works the same at any size
	in, err := s.Attach(sink{}, PortConfig{Name: "in"})
	if err != nil {
		t.Fatal(err)
	}
	send := func(i int) {
		src := MAC{0x02, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		in.Input([]*Frame{frameOf(eth(Broadcast, src, etherTypeARP, arp(src, ipA, ipB)))})
	}
	for i := range limit + 100 {
		send(i)
	}
	if got := s.fdb.len(); got != limit {
		t.Errorf("FDB holds %d entries after %d source MACs, want the bound %d", got, limit+100, limit)
	}
	late := MAC{0x02, 0, 0, 0x01, 0xff, 0xff}
	send(0x1ffff)
	if _, ok := s.Lookup(late); ok {
		t.Errorf("a MAC was learned into a full table")
	}

	// Once the old entries age out, a new MAC sweeps them away.
	clock.Advance(DefaultAgingTime + time.Second)
	send(0x1ffff)
	if _, ok := s.Lookup(late); !ok {
		t.Errorf("a MAC was not learned after the table's entries aged out")
	}
	if got := s.fdb.len(); got != 1 {
		t.Errorf("FDB holds %d entries after the sweep, want 1", got)
	}
}
