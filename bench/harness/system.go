package main

import (
	"context"
	"os/exec"
)

// System is one way of giving a network namespace connectivity: usernet,
// slirp4netns, pasta, or the kernel's own veth and bridge. Each lives in
// a file of its own and builds the same topology:
//
//   - namespace 0 runs the in-namespace servers (probe serve: iperf3 -s on
//     nsIperfPort, TCP echo on nsTCPEcho, UDP echo on nsUDPEcho);
//   - those three ports are published on the host's loopback at
//     hostIperfPort, hostTCPEcho, hostUDPEcho where the system can publish;
//   - namespace 1, where the system has one on the same network, is the
//     client for the namespace-to-namespace workload.
type System interface {
	// Name is the column heading in the report.
	Name() string
	// Check reports why the system cannot run on this machine (a missing
	// binary, a CLI that does not build yet), or nil.
	Check(ctx context.Context) error
	// Setup builds the topology with the given MTU and starts the
	// in-namespace servers; it returns once they accept connections.
	// On error it leaves nothing behind.
	Setup(ctx context.Context, mtu int) (Env, error)
}

// Env is one System set up at one MTU. Its methods other than Teardown
// may be called concurrently.
type Env interface {
	// Command returns a command running argv inside namespace ns (0 or 1).
	Command(ctx context.Context, ns int, argv ...string) *exec.Cmd
	// HostAddr is the address a namespace dials to reach a server on the
	// host (slirp4netns' 10.0.2.2, usernet's gateway, the host's veth
	// address for the kernel).
	HostAddr() string
	// HostBind is the address host-side servers listen on so that
	// HostAddr reaches them (127.0.0.1 for the emulators, which map their
	// gateway address to the host's loopback).
	HostBind() string
	// Published returns the host address:port that reaches nsPort/proto
	// in namespace 0, and whether the system can publish it. For the
	// kernel it is namespace 0's own address: there is no proxy to go
	// through, which is what the other systems are compared against.
	Published(proto string, nsPort int) (string, bool)
	// Peer returns namespace 0's address as namespace 1 sees it, and
	// whether there is a namespace 1 on the same network.
	Peer() (string, bool)
	// EmulatorPID is the user-space process that carries the traffic
	// (the usernet daemon, slirp4netns, pasta), 0 for the kernel.
	EmulatorPID() int
	// Teardown removes everything Setup made.
	Teardown() error
}

// unavailable wraps a Setup error that says the system cannot be built
// in this configuration on this machine (a CLI that lacks a feature yet),
// as opposed to a failure. The harness reports it as "not available"
// and it does not fail the run.
type unavailable struct{ error }

func (u unavailable) Unwrap() error { return u.error }

// Sandboxer is implemented by systems that can measure what one more
// sandbox costs their emulator: the harness creates n idle sandboxes and
// asks for the memory per sandbox, in bytes.
type Sandboxer interface {
	MemoryPerSandbox(ctx context.Context, n int) (float64, error)
}

// Ports used inside namespaces and on the host. They are fixed so that a
// report names them, below Linux's ephemeral range (32768-60999: an
// outgoing connection may hold any port in it) and away from the usual
// test ports (5201, 8080, 15201...) of other programs on a shared machine;
// checkHostPorts makes sure nobody else holds them before each setup, so
// a published-port figure can never be another program's.
const (
	nsIperfPort = 5201
	nsTCPEcho   = 7001
	nsUDPEcho   = 7002

	hostIperfPort = 24201 // published -> nsIperfPort
	hostTCPEcho   = 24001 // published -> nsTCPEcho
	hostUDPEcho   = 24002 // published -> nsUDPEcho

	// Host-side servers for the namespace -> host workloads.
	hostSideIperf = 24301
	hostSideTCP   = 24101
	hostSideUDP   = 24102
)
