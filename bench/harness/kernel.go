package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"

	"github.com/usernet/usernet/bench/internal/netns"
)

// kernel is the reference: the kernel's own data path, no user-space
// process in the way. Namespace 0 reaches the host over a veth pair
// (10.203.0.0/24); namespaces 0 and 1 share a kernel bridge
// (10.204.0.0/24), as Docker's docker0 bridge connects containers.
// "Published" ports are namespace 0's address on the veth: the kernel
// needs no proxy.
type kernel struct {
	probe string
}

const (
	kernelNS0, kernelNS1 = "unbench-k0", "unbench-k1"
	kernelHostVeth       = "unbk-h"
	kernelBridge         = "unbk-br"
	kernelHostIP         = "10.203.0.1"
	kernelNS0IP          = "10.203.0.2"
	kernelBrNS0IP        = "10.204.0.2"
	kernelBrNS1IP        = "10.204.0.3"
)

func (*kernel) Name() string { return "kernel" }

func (*kernel) Check(context.Context) error { return lookPath("ip", "iproute2") }

type kernelEnv struct {
	ns     [2]*netns.NS
	server *proc
}

func (k *kernel) Setup(ctx context.Context, mtu int) (Env, error) {
	e := &kernelEnv{}
	if err := k.build(ctx, e, mtu); err != nil {
		return nil, errors.Join(fmt.Errorf("kernel: %w", err), e.Teardown())
	}
	return e, nil
}

func (k *kernel) build(ctx context.Context, e *kernelEnv, mtu int) error {
	// Leftovers of a crashed run would make `ip link add` fail.
	_ = netns.Run(ctx, "ip", "link", "del", kernelBridge)
	_ = netns.Run(ctx, "ip", "link", "del", kernelHostVeth)
	var err error
	for i, name := range []string{kernelNS0, kernelNS1} {
		if e.ns[i], err = netns.Add(ctx, name); err != nil {
			return err
		}
	}
	m := strconv.Itoa(mtu)
	host := [][]string{
		{"ip", "link", "add", kernelHostVeth, "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", kernelNS0},
		{"ip", "addr", "add", kernelHostIP + "/24", "dev", kernelHostVeth},
		{"ip", "link", "set", kernelHostVeth, "up"},
		{"ip", "link", "add", kernelBridge, "mtu", m, "type", "bridge"},
		{"ip", "link", "set", kernelBridge, "up"},
		{"ip", "link", "add", "unbk-b0", "mtu", m, "type", "veth", "peer", "name", "eth1", "mtu", m, "netns", kernelNS0},
		{"ip", "link", "add", "unbk-b1", "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", kernelNS1},
		{"ip", "link", "set", "unbk-b0", "master", kernelBridge, "up"},
		{"ip", "link", "set", "unbk-b1", "master", kernelBridge, "up"},
	}
	for _, argv := range host {
		if err := netns.Run(ctx, argv...); err != nil {
			return err
		}
	}
	inside := []struct {
		ns   int
		argv []string
	}{
		{0, []string{"ip", "addr", "add", kernelNS0IP + "/24", "dev", "eth0"}},
		{0, []string{"ip", "link", "set", "eth0", "up"}},
		{0, []string{"ip", "addr", "add", kernelBrNS0IP + "/24", "dev", "eth1"}},
		{0, []string{"ip", "link", "set", "eth1", "up"}},
		{1, []string{"ip", "addr", "add", kernelBrNS1IP + "/24", "dev", "eth0"}},
		{1, []string{"ip", "link", "set", "eth0", "up"}},
	}
	for _, c := range inside {
		if err := e.ns[c.ns].Run(ctx, c.argv...); err != nil {
			return err
		}
	}
	if e.server, err = startProc(e.ns[0].Command(context.Background(), serverArgv(k.probe)...)); err != nil {
		return err
	}
	return waitServers(ctx, e, k.probe, e.server)
}

func (e *kernelEnv) Command(ctx context.Context, ns int, argv ...string) *exec.Cmd {
	return e.ns[ns].Command(ctx, argv...)
}

func (*kernelEnv) HostAddr() string { return kernelHostIP }
func (*kernelEnv) HostBind() string { return kernelHostIP }

func (*kernelEnv) Published(_ string, nsPort int) (string, bool) {
	return kernelNS0IP + ":" + strconv.Itoa(nsPort), true
}

func (*kernelEnv) Peer() (string, bool) { return kernelBrNS0IP, true }
func (*kernelEnv) EmulatorPID() int     { return 0 }

func (e *kernelEnv) Teardown() error {
	if e.server != nil {
		e.server.stop()
	}
	var errs []error
	for _, ns := range e.ns {
		if ns != nil {
			errs = append(errs, ns.Close())
		}
	}
	// Deleting the namespaces took the veth pairs with them; the bridge
	// lives in the host namespace.
	errs = append(errs, netns.Run(context.Background(), "ip", "link", "del", kernelBridge))
	return errors.Join(errs...)
}
