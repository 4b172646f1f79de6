package stack

// The DHCP lease table: a plain data structure (STYLE 16). Methods take
// the time of the event; nothing here reads a clock or starts goroutines,
// and the caller serializes calls.

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	vswitch "github.com/usernet/usernet/switch"
)

// Errors from the lease table.
var (
	errNoFreeAddress  = errors.New("no free address in the DHCP range")
	errAddrNotLeased  = errors.New("address is outside the DHCP range or reserved")
	errAddrInUse      = errors.New("address is leased to another client")
	errNotOfferedHere = errors.New("no such lease")
)

// lease is one address held for one client. An entry stays in the table
// after it expires, so a returning client gets its old address back if
// nobody has taken it since.
type lease struct {
	mac    vswitch.MAC // the zero MAC for an address a client declined
	addr   netip.Addr
	expiry time.Time
	bound  bool // acknowledged (REQUEST/ACK), not just offered
}

// leaseTable hands out addresses from an inclusive range.
type leaseTable struct {
	start, end netip.Addr
	// excluded reports addresses that are never leased (the gateway's,
	// the network and broadcast addresses, reserved ones).
	excluded  func(netip.Addr) bool
	leaseTime time.Duration
	offerTime time.Duration

	byMAC  map[vswitch.MAC]*lease
	byAddr map[netip.Addr]*lease
}

func newLeaseTable(start, end netip.Addr, excluded func(netip.Addr) bool, leaseTime, offerTime time.Duration) *leaseTable {
	return &leaseTable{
		start:     start,
		end:       end,
		excluded:  excluded,
		leaseTime: leaseTime,
		offerTime: offerTime,
		byMAC:     make(map[vswitch.MAC]*lease),
		byAddr:    make(map[netip.Addr]*lease),
	}
}

// leasable reports whether a may ever be leased.
func (t *leaseTable) leasable(a netip.Addr) bool {
	return a.Is4() && t.start.Compare(a) <= 0 && a.Compare(t.end) <= 0 && !t.excluded(a)
}

// free reports whether mac may take a at time at.
func (t *leaseTable) free(a netip.Addr, mac vswitch.MAC, at time.Time) bool {
	l := t.byAddr[a]
	return l == nil || l.mac == mac || !at.Before(l.expiry)
}

// offer picks an address for mac and holds it for offerTime: the client's
// current or previous address if still available, else want if it is
// leasable and free, else the lowest free address.
func (t *leaseTable) offer(mac vswitch.MAC, want netip.Addr, at time.Time) (netip.Addr, error) {
	if l := t.byMAC[mac]; l != nil && t.byAddr[l.addr] == l && !t.excluded(l.addr) {
		if !l.bound || !at.Before(l.expiry) {
			l.bound = false
			l.expiry = at.Add(t.offerTime)
		}
		return l.addr, nil
	}
	if want.IsValid() && t.leasable(want) && t.free(want, mac, at) {
		t.take(mac, want, at.Add(t.offerTime), false)
		return want, nil
	}
	for a := t.start; a.IsValid() && a.Compare(t.end) <= 0; a = a.Next() {
		if !t.excluded(a) && t.free(a, mac, at) {
			t.take(mac, a, at.Add(t.offerTime), false)
			return a, nil
		}
	}
	return netip.Addr{}, errNoFreeAddress
}

// bind leases a to mac for leaseTime (a REQUEST: selecting an offer,
// rebooting or renewing) and returns when the lease expires.
func (t *leaseTable) bind(mac vswitch.MAC, a netip.Addr, at time.Time) (time.Time, error) {
	if !t.leasable(a) {
		return time.Time{}, errAddrNotLeased
	}
	if !t.free(a, mac, at) {
		return time.Time{}, errAddrInUse
	}
	expiry := at.Add(t.leaseTime)
	t.take(mac, a, expiry, true)
	return expiry, nil
}

// release ends mac's lease on a now (a RELEASE). The entry is kept so the
// client gets the same address back if nobody else takes it.
func (t *leaseTable) release(mac vswitch.MAC, a netip.Addr, at time.Time) error {
	l := t.byMAC[mac]
	if l == nil || l.addr != a || t.byAddr[a] != l {
		return errNotOfferedHere
	}
	l.bound = false
	l.expiry = at
	return nil
}

// decline records that a client found a in use by someone else (a
// DECLINE): nobody gets it for leaseTime.
func (t *leaseTable) decline(mac vswitch.MAC, a netip.Addr, at time.Time) error {
	l := t.byMAC[mac]
	if l == nil || l.addr != a || t.byAddr[a] != l {
		return errNotOfferedHere
	}
	delete(t.byMAC, mac)
	t.byAddr[a] = &lease{addr: a, expiry: at.Add(t.leaseTime)}
	return nil
}

// take records a lease of a to mac, replacing mac's previous entry and
// a's previous holder.
func (t *leaseTable) take(mac vswitch.MAC, a netip.Addr, expiry time.Time, bound bool) {
	if old := t.byMAC[mac]; old != nil && t.byAddr[old.addr] == old {
		delete(t.byAddr, old.addr)
	}
	if old := t.byAddr[a]; old != nil && t.byMAC[old.mac] == old {
		delete(t.byMAC, old.mac)
	}
	l := &lease{mac: mac, addr: a, expiry: expiry, bound: bound}
	t.byMAC[mac] = l
	t.byAddr[a] = l
}

// Lease is a bound DHCP lease, as Gateway.Leases reports it.
type Lease struct {
	MAC    vswitch.MAC
	Addr   netip.Addr
	Expiry time.Time
}

// leases returns the leases bound and unexpired at time at, by address.
func (t *leaseTable) leases(at time.Time) []Lease {
	var out []Lease
	for _, l := range t.byAddr {
		if l.bound && at.Before(l.expiry) {
			out = append(out, Lease{MAC: l.mac, Addr: l.addr, Expiry: l.expiry})
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	return out
}
