package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/usernet/usernet/nat"
	"github.com/usernet/usernet/stack"
	vswitch "github.com/usernet/usernet/switch"
)

// netBridge is a bridge network's data path: a switch, the gateway stack
// attached to it as a port, outbound NAT behind the gateway's forwarders,
// and the published-port listeners that dial into the network through the
// gateway. An internal network has neither NAT nor listeners (out and
// fwd are nil): its gateway answers ARP and pings to itself, refuses TCP
// (RST) and drops everything else, so nothing leaves the network and
// nothing reaches in.
type netBridge struct {
	log *slog.Logger
	sw  *vswitch.Switch
	gw  *stack.Gateway
	out *nat.Outbound // nil for an internal network
	fwd *nat.Forwards // nil for an internal network
}

// newNetBridge builds and connects a bridge network's data path.
func newNetBridge(s bridgeSpec) (bridge, error) {
	sw := vswitch.New(vswitch.Config{Clock: s.Clock, Logger: s.Logger, DisableICC: s.DisableICC})
	cfg := stack.Config{
		Name:         s.Name,
		MTU:          s.MTU,
		Addr:         s.Gateway,
		MAC:          vswitch.MAC(s.MAC),
		Logger:       s.Logger,
		Clock:        s.Clock,
		TranslateTCP: !s.TCPNetstack,
	}
	var out *nat.Outbound
	if !s.Internal {
		out = nat.NewOutbound(nat.Config{
			Gateway:      s.Gateway.Addr(),
			HostLoopback: s.HostLoopback,
			Subnet:       s.Gateway.Masked(),
			Logger:       s.Logger,
			Clock:        s.Clock,
		})
		// Assigned only when set: a nil *nat.Outbound in the interface
		// fields would not read as "no handler".
		cfg.TCP, cfg.UDP, cfg.Echo = out, out, out
	}
	closeOut := func() {
		if out != nil {
			out.Close()
		}
	}
	gw, err := stack.New(cfg)
	if err != nil {
		closeOut()
		sw.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if _, err := gw.Attach(sw); err != nil {
		gw.Close()
		closeOut()
		sw.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	b := &netBridge{log: s.Logger, sw: sw, gw: gw, out: out}
	if !s.Internal {
		b.fwd = nat.NewForwards(gw, s.Gateway.Addr(), s.Logger)
	}
	return b, nil
}

// Bypass implements bridge.
func (b *netBridge) Bypass(dst netip.AddrPort) (netip.AddrPort, bool) {
	if b.out == nil {
		return netip.AddrPort{}, false
	}
	return b.out.Bypass(dst)
}

// Attach implements bridge.
func (b *netBridge) Attach(name string, tap *os.File, mac [6]byte, ip netip.Addr, direct nat.SocketSource) (func(), error) {
	t, err := stack.NewTAP(tap, b.log) // closes tap on error
	if err != nil {
		return nil, err
	}
	// Direct: whoever forwards a frame to the sandbox (the gateway's
	// netstack, another sandbox's reader) writes it to the TAP itself,
	// saving a goroutine hop per frame; a TAP write never waits for the
	// guest, so no sender can be held up by it.
	att, err := b.sw.Attach(t, vswitch.PortConfig{
		Name:     name,
		Offloads: t.Offloads(),
		Direct:   true,
		Bind:     &vswitch.Binding{MAC: vswitch.MAC(mac), IPv4: ip},
	})
	if err != nil {
		t.Close()
		return nil, err
	}
	if direct == nil || b.fwd == nil {
		return att.Detach, nil
	}
	undirect := b.fwd.Direct(ip, direct)
	return func() {
		undirect()
		att.Detach()
	}, nil
}

// errInternal refuses published ports on an internal network; Run
// discards them before it gets here.
var errInternal = errors.New("an internal network has no published ports")

// Publish implements bridge.
func (b *netBridge) Publish(m PortMapping, target netip.AddrPort) (PortMapping, error) {
	if b.fwd == nil {
		return PortMapping{}, withKind(ErrInvalid, errInternal)
	}
	got, err := b.fwd.Add(nat.Mapping{Proto: m.Proto, HostIP: m.HostIP, HostPort: m.HostPort, Target: target})
	if errors.Is(err, nat.ErrPortInUse) {
		return PortMapping{}, withKind(ErrConflict, err)
	}
	if err != nil {
		return PortMapping{}, err
	}
	m.HostIP, m.HostPort = got.HostIP, got.HostPort
	return m, nil
}

// Unpublish implements bridge.
func (b *netBridge) Unpublish(m PortMapping, target netip.AddrPort) error {
	if b.fwd == nil {
		return errInternal
	}
	return b.fwd.Remove(nat.Mapping{Proto: m.Proto, HostIP: m.HostIP, HostPort: m.HostPort, Target: target})
}

// TCPMode implements bridge: how guests' outbound TCP is carried.
func (b *netBridge) TCPMode() string {
	switch {
	case b.out == nil:
		return "none"
	case b.gw.TranslatesTCP():
		return "translated"
	}
	return "netstack"
}

// EchoMode implements bridge: "none" on an internal network, whose
// gateway answers pings to itself only.
func (b *netBridge) EchoMode() string {
	if b.out == nil {
		return "none"
	}
	return b.out.EchoMode()
}

// Close implements bridge: inbound listeners first, then the gateway
// (which detaches from the switch), the NAT's host sockets, the switch.
func (b *netBridge) Close() {
	if b.fwd != nil {
		b.fwd.Close()
	}
	b.gw.Close()
	if b.out != nil {
		b.out.Close()
	}
	b.sw.Close()
}
