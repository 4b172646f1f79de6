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
	vswitch "github.com/usernet/usernet/switch"
)

// vnetPath is usernet's own data path, assembled as the daemon assembles
// a network: a vnet-header TAP (stack.NewTAP) and the gateway's netstack
// (stack.New) on one vswitch.Switch, with nat.Outbound as the gateway's
// TCP handler. A connection from the namespace to the gateway address
// goes TAP -> switch -> netstack -> nat relay -> host socket to
// 127.0.0.1 (HostLoopback).
type vnetPath struct {
	sw  *vswitch.Switch
	tap *vswitch.Attachment
	gw  *stack.Gateway
	out *nat.Outbound
}

func newVnetPath(_ context.Context, ns *netns.NS, mtu int, gw netip.Prefix, logger *slog.Logger) (*vnetPath, error) {
	var f *os.File
	if err := ns.Do(func() error {
		var err error
		f, err = stack.CreateTAP(tapName, mtu)
		return err
	}); err != nil {
		return nil, fmt.Errorf("vnet: %w", err)
	}
	tap, err := stack.NewTAP(f, logger)
	if err != nil {
		return nil, fmt.Errorf("vnet: %w", err)
	}
	sw := vswitch.New(vswitch.Config{Logger: logger})
	// Direct, as engine/bridge.go attaches sandbox TAPs, so this measures
	// the path `usernet run` uses.
	att, err := sw.Attach(tap, vswitch.PortConfig{Name: "tap:" + tap.Name(), Offloads: tap.Offloads(), Direct: true})
	if err != nil {
		tap.Close()
		sw.Close()
		return nil, fmt.Errorf("vnet: attach tap: %w", err)
	}
	cfg, out := gatewayConfig(mtu, gw, logger)
	g, err := stack.New(cfg)
	if err != nil {
		out.Close()
		sw.Close()
		return nil, fmt.Errorf("vnet: %w", err)
	}
	if _, err := g.Attach(sw); err != nil {
		g.Close()
		out.Close()
		sw.Close()
		return nil, fmt.Errorf("vnet: attach gateway: %w", err)
	}
	return &vnetPath{sw: sw, tap: att, gw: g, out: out}, nil
}

// Stats describes the TAP port's traffic: the mean frame size shows
// whether TSO super-frames (tens of KiB) or MTU-sized frames crossed it.
func (p *vnetPath) Stats() string {
	st := p.tap.Stats()
	mean := func(b, f uint64) uint64 {
		if f == 0 {
			return 0
		}
		return b / f
	}
	return fmt.Sprintf("tap rx %d frames (mean %d B), tx %d frames (mean %d B), drops queue-full %d tx-error %d",
		st.RxFrames, mean(st.RxBytes, st.RxFrames), st.TxFrames, mean(st.TxBytes, st.TxFrames), st.DropQueueFull, st.DropTxError)
}

// Close ends the relays, then the gateway, then the switch (which closes
// the TAP and so removes the interface).
func (p *vnetPath) Close() error {
	p.out.Close()
	p.gw.Close()
	p.sw.Close()
	return nil
}

// gatewayConfig is the gateway both paths share: the same address, MAC and
// outbound NAT, so the only difference measured is the link endpoint. The
// caller closes the returned Outbound.
func gatewayConfig(mtu int, gw netip.Prefix, logger *slog.Logger) (stack.Config, *nat.Outbound) {
	out := nat.NewOutbound(nat.Config{Gateway: gw.Addr(), HostLoopback: true, Logger: logger})
	return stack.Config{
		Name:   "bench",
		MTU:    mtu,
		Addr:   gw,
		MAC:    gatewayMAC,
		Logger: logger,
		TCP:    out,
		UDP:    out,
		Echo:   out,
	}, out
}
