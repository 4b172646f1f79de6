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
// gateway.
type netBridge struct {
	log *slog.Logger
	sw  *vswitch.Switch
	gw  *stack.Gateway
	out *nat.Outbound
	fwd *nat.Forwards
}

// newNetBridge builds and connects a bridge network's data path.
func newNetBridge(s bridgeSpec) (bridge, error) {
	sw := vswitch.New(vswitch.Config{Clock: s.Clock, Logger: s.Logger})
	out := nat.NewOutbound(nat.Config{
		Gateway:      s.Gateway.Addr(),
		HostLoopback: s.HostLoopback,
		Logger:       s.Logger,
		Clock:        s.Clock,
	})
	gw, err := stack.New(stack.Config{
		Name:   s.Name,
		MTU:    s.MTU,
		Addr:   s.Gateway,
		MAC:    vswitch.MAC(s.MAC),
		Logger: s.Logger,
		TCP:    out,
		UDP:    out,
		Echo:   out,
		Clock:  s.Clock,
	})
	if err != nil {
		out.Close()
		sw.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if _, err := gw.Attach(sw); err != nil {
		gw.Close()
		out.Close()
		sw.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return &netBridge{
		log: s.Logger,
		sw:  sw,
		gw:  gw,
		out: out,
		fwd: nat.NewForwards(gw, s.Gateway.Addr(), s.Logger),
	}, nil
}

// Attach implements bridge.
func (b *netBridge) Attach(name string, tap *os.File, mac [6]byte, ip netip.Addr) (func(), error) {
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
	return att.Detach, nil
}

// Publish implements bridge.
func (b *netBridge) Publish(m PortMapping, target netip.AddrPort) (PortMapping, error) {
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
	return b.fwd.Remove(nat.Mapping{Proto: m.Proto, HostIP: m.HostIP, HostPort: m.HostPort, Target: target})
}

// EchoMode implements bridge.
func (b *netBridge) EchoMode() string { return b.out.EchoMode() }

// Close implements bridge: inbound listeners first, then the gateway
// (which detaches from the switch), the NAT's host sockets, the switch.
func (b *netBridge) Close() {
	b.fwd.Close()
	b.gw.Close()
	b.out.Close()
	b.sw.Close()
}
