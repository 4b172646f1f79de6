package engine

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// User-defined networks, as `docker network create/rm/prune` make them.
// Create goes in these steps, any failure undoing what came before, so a
// failed create leaves nothing behind (no record, no data path):
//
//  1. validate the request on its own (name, driver, options, addresses)
//  2. under e.mu: check the name and subnet against every network and
//     every create in flight, pick a pool if no subnet was given, and
//     hold both as pending
//  3. bring the data path up (switch, gateway, NAT), without the lock
//  4. under e.mu: record the network in bbolt and publish it
//
// Remove and prune refuse networks with a sandbox attached or starting:
// a Run holds its address from before it starts the sandbox until the
// sandbox's command has exited, so "no address allocated" means "nobody
// attached".

// Driver and option names, as Docker spells them.
const (
	driverBridge = "bridge"
	// OptionMTU is the -o key of a network's MTU.
	OptionMTU = "com.docker.network.driver.mtu"
	// OptionICC is the -o key that turns inter-container communication
	// off ("false") or on ("true", the default).
	OptionICC = "com.docker.network.bridge.enable_icc"
)

// MTU bounds of a network: 68 is IPv4's minimum, 65520 the largest a TAP
// device takes with room for its Ethernet header (and what slirp4netns and
// rootlesskit use for speed).
const (
	minMTU = 68
	maxMTU = 65520
)

// NetworkCreateConfig is what `usernet network create` asks for. The zero
// value of every field but Name has a default.
type NetworkCreateConfig struct {
	// Name is the network's unique name: [a-zA-Z0-9][a-zA-Z0-9_.-]*, not
	// a predefined network's (bridge, host, none) nor "default". Required.
	Name string
	// Driver is "bridge" or "" (which means bridge); usernet has no other
	// driver for user-defined networks.
	Driver string
	// Subnet is the network's IPv4 subnet in canonical form
	// (172.28.0.0/16, not 172.28.5.3/16), /30 or larger; the zero Prefix
	// picks the first of Docker's default pools (172.17.0.0/16 up to
	// 172.31.0.0/16, then 192.168.0.0/20 in /20 steps) that overlaps no
	// other network: 172.18.0.0/16 for the first one.
	Subnet netip.Prefix
	// Gateway is the gateway's address, a host address of Subnet; the
	// zero Addr means the subnet's first host address. Needs Subnet.
	Gateway netip.Addr
	// IPRange, when valid, narrows the addresses handed to sandboxes to
	// this canonical sub-prefix of Subnet. Needs Subnet.
	IPRange netip.Prefix
	// Internal cuts the network off from everything outside it: no NAT to
	// the host or beyond, and no published ports (Run discards them with
	// a warning). Sandboxes still reach each other and ping the gateway.
	Internal bool
	// Options are the -o driver options. Only OptionMTU (68..65520,
	// default 1500) and OptionICC ("true" or "false") are known; any other
	// key is an error rather than silently ignored.
	Options map[string]string
	// Labels are the network's --label metadata, shown by NetworkInspect.
	Labels map[string]string
}

// validNetworkName is what a network name may look like: sandbox names'
// characters, one of them enough.
var validNetworkName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// predefinedNames are the networks every daemon has (defaultNetworks);
// "default" is Run's alias of bridge, so no network may take it either.
var predefinedNames = []string{"bridge", "host", "none", "default"}

// isPredefined reports whether r is one of the networks every daemon has,
// which cannot be removed. User-defined networks cannot take their names.
func isPredefined(r networkRecord) bool { return slices.Contains(predefinedNames, r.Name) }

// Docker's default address pools, in the order it hands them out: each
// /16 of 172.17.0.0-172.31.255.255, then 192.168.0.0/16 in /20s.
func defaultPools() []netip.Prefix {
	var pools []netip.Prefix
	for b := 17; b <= 31; b++ {
		pools = append(pools, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(b), 0, 0}), 16))
	}
	for c := 0; c < 256; c += 16 {
		pools = append(pools, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(c), 0}), 20))
	}
	return pools
}

// checkNetworkConfig validates cfg on its own (step 1) and returns the
// record it asks for, without ID, Created or, when cfg.Subnet is zero,
// Subnet and Gateway.
func checkNetworkConfig(cfg NetworkCreateConfig) (networkRecord, error) {
	r := networkRecord{
		Name:     cfg.Name,
		Driver:   driverBridge,
		MTU:      defaultMTU,
		Internal: cfg.Internal,
		Options:  map[string]string{},
		Labels:   maps.Clone(cfg.Labels),
	}
	switch {
	case cfg.Name == "":
		return r, errorf(ErrInvalid, "no network name given: usage is network create [OPTIONS] NAME")
	case slices.Contains(predefinedNames, cfg.Name):
		return r, errorf(ErrInvalid, "network name %q is reserved for a predefined network: choose another name", cfg.Name)
	case !validNetworkName.MatchString(cfg.Name):
		return r, errorf(ErrInvalid, "invalid network name %q: use letters, digits and _.- only, starting with a letter or digit", cfg.Name)
	case isHex64(cfg.Name):
		return r, errorf(ErrInvalid, "invalid network name %q: a name may not look like a 64-digit ID", cfg.Name)
	}
	if cfg.Driver != "" && cfg.Driver != driverBridge {
		return r, errorf(ErrInvalid, "network driver %q is not supported: usernet creates bridge networks only (--driver bridge)", cfg.Driver)
	}
	for _, k := range slices.Sorted(maps.Keys(cfg.Options)) {
		v := cfg.Options[k]
		switch k {
		case OptionMTU:
			mtu, err := strconv.Atoi(v)
			if err != nil || mtu < minMTU || mtu > maxMTU {
				return r, errorf(ErrInvalid, "invalid -o %s=%s: give an MTU from %d to %d", k, v, minMTU, maxMTU)
			}
			r.MTU = mtu
			v = strconv.Itoa(mtu)
		case OptionICC:
			icc, err := strconv.ParseBool(v)
			if err != nil {
				return r, errorf(ErrInvalid, "invalid -o %s=%s: use true or false", k, v)
			}
			r.DisableICC = !icc
			v = strconv.FormatBool(icc)
		default:
			return r, errorf(ErrInvalid, "unknown option -o %s for the bridge driver: usernet knows %s and %s", k, OptionMTU, OptionICC)
		}
		r.Options[k] = v
	}
	for k := range cfg.Labels {
		if k == "" {
			return r, errorf(ErrInvalid, "invalid --label with an empty key: use --label KEY=VALUE")
		}
	}

	if !cfg.Subnet.IsValid() {
		if cfg.Gateway.IsValid() {
			return r, errorf(ErrInvalid, "--gateway %v needs --subnet: give the subnet it belongs to", cfg.Gateway)
		}
		if cfg.IPRange.IsValid() {
			return r, errorf(ErrInvalid, "--ip-range %v needs --subnet: give the subnet it narrows", cfg.IPRange)
		}
		return r, nil
	}
	s := cfg.Subnet
	switch {
	case !s.Addr().Is4():
		return r, errorf(ErrInvalid, "subnet %v: only IPv4 subnets are supported", s)
	case s != s.Masked():
		return r, errorf(ErrInvalid, "invalid subnet %v: it should be %v", s, s.Masked())
	case s.Bits() > 30:
		return r, errorf(ErrInvalid, "subnet %v is too small: use a /30 or larger", s)
	}
	r.Subnet = s
	r.Gateway = cfg.Gateway
	if !r.Gateway.IsValid() {
		r.Gateway = s.Addr().Next()
	} else if !r.Gateway.Is4() || !s.Contains(r.Gateway) || r.Gateway == s.Addr() || r.Gateway == lastAddr(s) {
		return r, errorf(ErrInvalid, "gateway %v is outside subnet %v: give a host address of the subnet, such as %v", cfg.Gateway, s, s.Addr().Next())
	}
	if ipr := cfg.IPRange; ipr.IsValid() {
		switch {
		case !ipr.Addr().Is4():
			return r, errorf(ErrInvalid, "ip range %v: only IPv4 ranges are supported", ipr)
		case ipr != ipr.Masked():
			return r, errorf(ErrInvalid, "invalid ip range %v: it should be %v", ipr, ipr.Masked())
		case ipr.Bits() < s.Bits() || !s.Contains(ipr.Addr()):
			return r, errorf(ErrInvalid, "ip range %v is not inside subnet %v: give a prefix of the subnet", ipr, s)
		}
		r.IPRange = ipr
	}
	// The allocator's own checks (room for an address) come last.
	if _, err := newIPAM(r.Subnet, r.Gateway, r.IPRange); err != nil {
		return r, err
	}
	return r, nil
}

// pendingNetwork is a create between steps 2 and 4.
type pendingNetwork struct {
	name   string
	subnet netip.Prefix
}

// claimLocked checks r's name and subnet against every network and every
// create in flight, picks a pool when r has no subnet, and records the
// claim as pending under id. Callers hold e.mu.
func (e *Engine) claimLocked(id string, r *networkRecord) error {
	taken := func(name string) bool {
		for _, n := range e.networks {
			if n.rec.Name == name {
				return true
			}
		}
		for _, p := range e.pending {
			if p.name == name {
				return true
			}
		}
		return false
	}
	if taken(r.Name) {
		return errorf(ErrConflict, "network with name %s already exists: choose another name, or remove it first (network rm %s)", r.Name, r.Name)
	}
	// overlap names what s overlaps, "" when nothing.
	overlap := func(s netip.Prefix) string {
		for _, n := range e.sortedNetworksLocked() {
			if n.rec.Subnet.IsValid() && n.rec.Subnet.Overlaps(s) {
				return fmt.Sprintf("network %s (%v)", n.rec.Name, n.rec.Subnet)
			}
		}
		for _, p := range e.pending {
			if p.subnet.Overlaps(s) {
				return fmt.Sprintf("network %s (%v), being created", p.name, p.subnet)
			}
		}
		return ""
	}
	if r.Subnet.IsValid() {
		if o := overlap(r.Subnet); o != "" {
			return errorf(ErrConflict, "subnet %v overlaps %s: choose a subnet that overlaps no other network (see network inspect)", r.Subnet, o)
		}
	} else {
		for _, pool := range defaultPools() {
			if overlap(pool) == "" {
				r.Subnet, r.Gateway = pool, pool.Addr().Next()
				break
			}
		}
		if !r.Subnet.IsValid() {
			return errorf(ErrConflict, "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network: give one with --subnet, or remove networks you no longer need (network prune)")
		}
	}
	e.pending[id] = pendingNetwork{name: r.Name, subnet: r.Subnet}
	return nil
}

// sortedNetworksLocked returns the networks by name, so that messages
// naming one of several are stable. Callers hold e.mu.
func (e *Engine) sortedNetworksLocked() []*network {
	out := slices.Collect(maps.Values(e.networks))
	slices.SortFunc(out, func(a, b *network) int { return strings.Compare(a.rec.Name, b.rec.Name) })
	return out
}

func (e *Engine) networkCreate(_ context.Context, cfg NetworkCreateConfig) (string, error) {
	// 1.
	rec, err := checkNetworkConfig(cfg)
	if err != nil {
		return "", err
	}
	id := newID()
	rec.ID = id
	rec.Created = e.now().UTC()

	// 2.
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return "", errClosed
	}
	err = e.claimLocked(id, &rec)
	e.mu.Unlock()
	if err != nil {
		return "", err
	}
	unclaim := func() {
		e.mu.Lock()
		delete(e.pending, id)
		e.mu.Unlock()
	}

	// 3.
	n, err := e.bringUp(rec)
	if err != nil {
		unclaim()
		return "", fmt.Errorf("create network %s: %w", rec.Name, err)
	}

	// 4.
	e.mu.Lock()
	delete(e.pending, id)
	if e.closing {
		e.mu.Unlock()
		n.br.Close()
		return "", errClosed
	}
	if err := e.store.update(func(t txn) error { return t.putNetwork(rec) }); err != nil {
		e.mu.Unlock()
		n.br.Close()
		return "", fmt.Errorf("record network %s: %w", rec.Name, err)
	}
	e.networks[id] = n
	e.mu.Unlock()
	return id, nil
}

// bringUp builds a network's allocator and, for a bridge network, its
// data path, from its record: for Create and for restoring state.
func (e *Engine) bringUp(r networkRecord) (*network, error) {
	n := &network{rec: r}
	if r.Driver != driverBridge {
		return n, nil
	}
	var err error
	if n.ipam, err = newIPAM(r.Subnet, r.Gateway, r.IPRange); err != nil {
		return nil, err
	}
	n.br, err = e.deps.newBridge(bridgeSpec{
		Name:         r.Name,
		Gateway:      netip.PrefixFrom(r.Gateway, r.Subnet.Bits()),
		MAC:          macFor(r.Gateway),
		MTU:          r.MTU,
		HostLoopback: !e.cfg.DisableHostLoopback,
		TCPNetstack:  e.cfg.TCPNetstack,
		Internal:     r.Internal,
		DisableICC:   r.DisableICC,
		Logger:       e.log.With("network", r.Name),
		Clock:        e.now,
	})
	if err != nil {
		return nil, err
	}
	e.log.Info("network up", "network", r.Name, "subnet", r.Subnet, "gateway", r.Gateway, "mtu", r.MTU,
		"internal", r.Internal, "icc", !r.DisableICC, "icmp_echo", n.br.EchoMode(), "host_loopback", !e.cfg.DisableHostLoopback,
		"tcp", n.br.TCPMode())
	return n, nil
}

// resolveNetworkLocked finds the network nameOrID denotes (name, full ID
// or unique ID prefix). Callers hold e.mu.
func (e *Engine) resolveNetworkLocked(nameOrID string) (*network, error) {
	var ids []string
	names := make(map[string]string)
	for id, n := range e.networks {
		ids = append(ids, id)
		names[n.rec.Name] = id
	}
	id, err := resolve("network", nameOrID, ids, names)
	if err != nil {
		return nil, err
	}
	return e.networks[id], nil
}

// inUseLocked returns the names of the sandboxes attached to n, and
// whether any sandbox is attached or starting on it. Callers hold e.mu.
func (e *Engine) inUseLocked(n *network) (names []string, inUse bool) {
	for _, c := range e.containers {
		if c.net == n && c.rec.Endpoint != nil {
			names = append(names, fmt.Sprintf("name:%q id:%q", c.rec.Name, shortID(c.rec.ID)))
		}
	}
	slices.Sort(names)
	return names, len(names) > 0 || (n.ipam != nil && n.ipam.InUse() > 0)
}

func (e *Engine) networkRemove(nameOrID string) error {
	e.mu.Lock()
	n, err := e.resolveNetworkLocked(nameOrID)
	if err != nil {
		e.mu.Unlock()
		return err
	}
	if isPredefined(n.rec) {
		e.mu.Unlock()
		return errorf(ErrInvalid, "%s is a pre-defined network and cannot be removed", n.rec.Name)
	}
	if names, used := e.inUseLocked(n); used {
		e.mu.Unlock()
		if len(names) == 0 {
			return errorf(ErrConflict, "error while removing network: network %s has a sandbox starting on it: wait for it, then stop it (stop NAME) and try again", n.rec.Name)
		}
		return errorf(ErrConflict, "error while removing network: network %s has active endpoints (%s): stop or remove those sandboxes first (rm -f NAME)",
			n.rec.Name, strings.Join(names, ", "))
	}
	if e.closing {
		e.mu.Unlock()
		return errClosed
	}
	if err := e.store.update(func(t txn) error { return t.deleteNetwork(n.rec.ID) }); err != nil {
		e.mu.Unlock()
		return fmt.Errorf("remove network %s: %w", n.rec.Name, err)
	}
	delete(e.networks, n.rec.ID)
	e.mu.Unlock()
	// Nothing is attached, so nothing sends into the data path any more.
	n.br.Close()
	e.log.Info("network removed", "network", n.rec.Name)
	return nil
}

func (e *Engine) networkPrune() ([]string, error) {
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return nil, errClosed
	}
	var unused []*network
	for _, n := range e.sortedNetworksLocked() {
		if _, used := e.inUseLocked(n); !used && !isPredefined(n.rec) {
			unused = append(unused, n)
		}
	}
	err := e.store.update(func(t txn) error {
		for _, n := range unused {
			if err := t.deleteNetwork(n.rec.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.mu.Unlock()
		return nil, fmt.Errorf("prune networks: %w", err)
	}
	names := []string{}
	for _, n := range unused {
		delete(e.networks, n.rec.ID)
		names = append(names, n.rec.Name)
	}
	e.mu.Unlock()
	for _, n := range unused {
		n.br.Close()
		e.log.Info("network removed", "network", n.rec.Name, "by", "prune")
	}
	return names, nil
}
