package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/usernet/usernet/bench/internal/netns"
	"github.com/usernet/usernet/nat"
	"github.com/usernet/usernet/stack"
)

// fdbasedPath is the baseline: gVisor's own fdbased link endpoint on a
// plain TAP (no virtio-net header, one frame per syscall), as the stack
// package builds it for a TAP without IFF_VNET_HDR (stack.NewFdbased),
// with the same nat.Outbound as the gateway's TCP handler. Only the link
// endpoint differs from vnetPath (and the switch, which fdbased bypasses),
// which is what this benchmark compares.
type fdbasedPath struct {
	gw  *stack.Gateway
	out *nat.Outbound
}

func newFdbasedPath(_ context.Context, ns *netns.NS, mtu int, gw netip.Prefix, logger *slog.Logger) (*fdbasedPath, error) {
	fd := -1
	if err := ns.Do(func() error {
		var err error
		fd, err = netns.OpenPlainTAP(tapName)
		return err
	}); err != nil {
		return nil, fmt.Errorf("fdbased: %w", err)
	}
	cfg, out := gatewayConfig(mtu, gw, logger)
	g, err := stack.NewFdbased(cfg, os.NewFile(uintptr(fd), "tap:"+tapName))
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("fdbased: %w", err)
	}
	return &fdbasedPath{gw: g, out: out}, nil
}

// Close ends the relays, then the gateway (which closes the TAP and so
// removes the interface).
func (p *fdbasedPath) Close() error {
	p.out.Close()
	p.gw.Close()
	return nil
}
