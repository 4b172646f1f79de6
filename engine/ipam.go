package engine

import (
	"errors"
	"net/netip"
)

// ipam hands out the host addresses of one IPv4 subnet (or of a narrower
// range inside it, Docker's --ip-range) to endpoints. The subnet's network
// and broadcast addresses and the gateway are never handed out. Allocation takes the lowest free address, so that, as with Docker's
// default bridge, the first sandbox gets .2 and an address freed by a
// removed sandbox is the next one handed out.
//
// ipam is a plain data structure: no locking, no persistence. The engine
// serializes calls under its mutex and records each change in bbolt in the
// same transaction as the endpoint that caused it.
type ipam struct {
	subnet  netip.Prefix          // masked
	gateway netip.Addr            // inside subnet, never allocated
	first   netip.Addr            // lowest assignable address
	last    netip.Addr            // highest assignable address
	used    map[netip.Addr]string // allocated address -> owner (endpoint ID)
}

// errExhausted reports that a subnet has no free address left.
var errExhausted = errors.New("no free address")

// newIPAM returns an allocator for subnet whose gateway is gateway,
// handing out addresses of ipRange only when ipRange is valid (it must lie
// inside subnet). The subnet must be IPv4 with room for at least one
// address besides the network, broadcast and gateway addresses (a /30 or
// larger).
func newIPAM(subnet netip.Prefix, gateway netip.Addr, ipRange netip.Prefix) (*ipam, error) {
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return nil, errorf(ErrInvalid, "subnet %v: only IPv4 subnets are supported", subnet)
	}
	subnet = subnet.Masked()
	if subnet.Bits() > 30 {
		return nil, errorf(ErrInvalid, "subnet %v: too small, use a /30 or larger", subnet)
	}
	network := subnet.Addr()
	broadcast := lastAddr(subnet)
	if !gateway.Is4() || !subnet.Contains(gateway) || gateway == network || gateway == broadcast {
		return nil, errorf(ErrInvalid, "gateway %v: must be a host address inside %v", gateway, subnet)
	}
	m := &ipam{
		subnet:  subnet,
		gateway: gateway,
		first:   network.Next(),
		last:    broadcast.Prev(),
		used:    make(map[netip.Addr]string),
	}
	if ipRange.IsValid() {
		ipRange = ipRange.Masked()
		if !ipRange.Addr().Is4() || ipRange.Bits() < subnet.Bits() || !subnet.Contains(ipRange.Addr()) {
			return nil, errorf(ErrInvalid, "ip range %v: not inside subnet %v", ipRange, subnet)
		}
		// Docker hands out every address of the range that is a host
		// address of the subnet (a range's own first address included).
		m.first = maxAddr(m.first, ipRange.Addr())
		m.last = minAddr(m.last, lastAddr(ipRange))
		if m.first == m.last && m.first == gateway || m.first.Compare(m.last) > 0 {
			return nil, errorf(ErrInvalid, "ip range %v has no address to hand out besides the gateway: give a larger range", ipRange)
		}
	}
	return m, nil
}

func maxAddr(a, b netip.Addr) netip.Addr {
	if a.Compare(b) >= 0 {
		return a
	}
	return b
}

func minAddr(a, b netip.Addr) netip.Addr {
	if a.Compare(b) <= 0 {
		return a
	}
	return b
}

// lastAddr returns the highest address of p (its broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	hostBits := 32 - p.Bits()
	for i := 3; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		a[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	return netip.AddrFrom4(a)
}

// Allocate assigns the lowest free address to owner.
func (m *ipam) Allocate(owner string) (netip.Addr, error) {
	for a := m.first; a.Compare(m.last) <= 0; a = a.Next() {
		if a == m.gateway {
			continue
		}
		if _, taken := m.used[a]; !taken {
			m.used[a] = owner
			return a, nil
		}
	}
	return netip.Addr{}, errorf(ErrConflict, "%w in %v (%d in use): remove sandboxes you no longer need",
		errExhausted, m.subnet, len(m.used))
}

// Reserve assigns a specific address to owner, as when state is restored.
func (m *ipam) Reserve(a netip.Addr, owner string) error {
	switch {
	case !m.subnet.Contains(a) || a.Compare(m.first) < 0 || a.Compare(m.last) > 0:
		return errorf(ErrInvalid, "address %v: not an assignable address of %v", a, m.subnet)
	case a == m.gateway:
		return errorf(ErrConflict, "address %v: it is the gateway of %v", a, m.subnet)
	}
	if cur, taken := m.used[a]; taken && cur != owner {
		return errorf(ErrConflict, "address %v: already in use", a)
	}
	m.used[a] = owner
	return nil
}

// Release frees a. Releasing a free address does nothing, so that every
// teardown path may release unconditionally.
func (m *ipam) Release(a netip.Addr) { delete(m.used, a) }

// Owner returns the owner of a, if it is allocated.
func (m *ipam) Owner(a netip.Addr) (string, bool) {
	o, ok := m.used[a]
	return o, ok
}

// InUse returns the number of allocated addresses.
func (m *ipam) InUse() int { return len(m.used) }
