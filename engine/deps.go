package engine

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/usernet/usernet/nat"
)

// The engine reaches the data-path packages (sandbox, switch, stack, nat)
// only through the small interfaces in this file. Production values are
// built in wire.go (sandbox) and bridge.go (switch, stack, nat); tests
// substitute fakes to inject failures at each step of Run and check that
// the rollback leaves nothing behind.

// deps are the engine's connections to the outside world.
type deps struct {
	launcher  launcher
	newBridge func(bridgeSpec) (bridge, error)
	// readFile reads the host's resolv.conf and hosts; hostname is the
	// host's name (for --network host).
	readFile func(path string) ([]byte, error)
	hostname func() (string, error)
}

// netMode is a sandbox's network mode.
type netMode string

const (
	modeBridge netMode = "bridge"
	modeHost   netMode = "host"
	modeNone   netMode = "none"
)

// launchSpec is what the engine asks of the sandbox package: the
// engine-side mirror of sandbox.Spec.
type launchSpec struct {
	Args, Env             []string
	Hostname              string
	TTY                   bool
	Stdin, Stdout, Stderr *os.File
	Mode                  netMode
	Iface                 *launchIface // Mode == modeBridge only
	ResolvConf, Hosts     []byte       // nil = leave the file alone
	// Bypass, when set, routes the sandbox's own connects to host
	// sockets (sandbox.Spec.Bypass).
	Bypass func(dst netip.AddrPort) (netip.AddrPort, bool)
	// Logger receives the sandbox's own warnings (its agent's, its
	// bypass supervisor's).
	Logger *slog.Logger
}

// launchIface is the sandbox's eth0.
type launchIface struct {
	Name    string
	MAC     [6]byte
	Addr    netip.Prefix // sandbox address with the network's prefix length
	Gateway netip.Addr
	MTU     int
}

// launcher starts sandboxes (sandbox.Start in production).
type launcher interface {
	Launch(ctx context.Context, spec launchSpec) (sandboxProcess, error)
}

// sandboxProcess is a started sandbox (*sandbox.Sandbox in production).
type sandboxProcess interface {
	// TAP returns the sandbox's eth0 TAP fd for bridge mode. The caller
	// takes ownership of it.
	TAP() *os.File
	// Wait blocks until the command exits and the agent has gone.
	Wait() (exitCode int, err error)
	// Signal delivers sig to the command.
	Signal(sig syscall.Signal) error
	// Kill kills every process in the sandbox at once.
	Kill() error
	// Close kills the sandbox if it still runs, waits for it to be gone
	// and releases the control channel; it does not close the TAP.
	Close() error
	// Pid is the host pid of the sandbox's first process (its agent).
	Pid() int
	// DirectSockets returns sockets made inside the sandbox's network
	// namespace for its published ports (nat.SocketSource).
	DirectSockets(ctx context.Context, n int) ([]*os.File, error)
	Exec(cfg ExecConfig) (execProcess, error)
}

// execProcess is a command started inside a running sandbox.
type execProcess interface {
	Wait() (exitCode int, err error)
	Signal(sig syscall.Signal) error
}

// bridgeSpec configures the data path of one bridge network.
type bridgeSpec struct {
	Name         string
	Gateway      netip.Prefix // gateway address with the subnet's length
	MAC          [6]byte      // the gateway's MAC
	MTU          int
	HostLoopback bool
	// TCPNetstack carries outbound TCP through gVisor's netstack and a
	// relay instead of the gateway's translator (stack.Config.TranslateTCP).
	TCPNetstack bool
	// Internal: no NAT (the gateway refuses TCP, drops UDP and pings to
	// anything but itself) and no published ports.
	Internal bool
	// DisableICC: sandboxes' frames reach only the gateway.
	DisableICC bool
	Logger     *slog.Logger
	Clock      func() time.Time
}

// bridge is the data path of one bridge network: a switch, its netstack
// gateway with outbound NAT, and the published-port listeners.
type bridge interface {
	// Attach makes tap a switch port bound to mac and ip. It takes
	// ownership of tap, closing it on failure too. Published TCP ports to
	// ip use sockets from direct, when not nil, instead of the gateway
	// (nat.Forwards.Direct). The returned detach removes the port, stops
	// using direct and closes the TAP.
	Attach(name string, tap *os.File, mac [6]byte, ip netip.Addr, direct nat.SocketSource) (detach func(), err error)
	// Publish starts forwarding m's host address to target inside the
	// network and returns m with the host port filled in.
	Publish(m PortMapping, target netip.AddrPort) (PortMapping, error)
	// Unpublish stops a forward that Publish returned.
	Unpublish(m PortMapping, target netip.AddrPort) error
	// Bypass says where a sandbox's own connection to dst goes as a host
	// socket (nat.Outbound.Bypass); false on an internal network.
	Bypass(dst netip.AddrPort) (netip.AddrPort, bool)
	// EchoMode says how pings from the network leave the host.
	EchoMode() string
	// TCPMode says how outbound TCP is carried: "translated",
	// "netstack" or "none" (an internal network).
	TCPMode() string
	// Close tears the network's data path down.
	Close()
}
