package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	vswitch "github.com/usernet/usernet/switch"
)

// NetMode chooses the sandbox's network namespace. The zero value is
// NetBridge, Docker's default.
type NetMode int

const (
	// NetBridge gives the sandbox a new network namespace with lo and one
	// TAP device (Spec.Iface) whose fd the daemon receives to plug into a
	// switch.
	NetBridge NetMode = iota
	// NetNone gives the sandbox a new network namespace with only lo up.
	NetNone
	// NetHost keeps the daemon's network namespace: the command sees the
	// host's interfaces and listens on the host's ports.
	NetHost
)

// String returns the Docker name of the mode: "bridge", "none" or "host".
func (m NetMode) String() string {
	switch m {
	case NetBridge:
		return "bridge"
	case NetNone:
		return "none"
	case NetHost:
		return "host"
	}
	return fmt.Sprintf("NetMode(%d)", int(m))
}

// Iface describes the TAP device the agent creates for NetBridge and how
// the kernel inside the sandbox is to use it.
type Iface struct {
	// Name is the device name inside the sandbox, usually "eth0".
	Name string
	// MAC is the device's hardware address (Docker uses 02:42 + IPv4).
	MAC vswitch.MAC
	// Addr is the sandbox's address and the network's prefix length,
	// e.g. 172.17.0.2/16. It must be a host address, not the network.
	Addr netip.Prefix
	// Gateway, when valid, becomes the default route; it must lie inside
	// Addr's prefix. The zero Addr means no default route (an internal
	// network).
	Gateway netip.Addr
	// MTU is the device MTU; 0 means 1500.
	MTU int
}

// Spec describes a sandbox and the command that runs in it. Start reads it
// and keeps no reference to it; the *os.File fields stay owned by the
// caller, who may close them once Start returns (the agent holds its own
// copies).
type Spec struct {
	// Args is the command and its arguments; Args[0] is looked up in the
	// PATH of Env (or the daemon's PATH when Env has none) inside the
	// sandbox's mount namespace.
	Args []string
	// Env is the command's environment; nil means the daemon's own.
	Env []string
	// Dir is the command's working directory inside; empty means "/".
	Dir string
	// Hostname is set in the sandbox's UTS namespace; empty keeps the
	// host's name.
	Hostname string
	// TTY runs the command on a new pseudo-terminal that the agent
	// allocates inside the sandbox (as docker -t does): the pty is the
	// command's fds 0, 1 and 2 and its controlling terminal. The agent
	// copies Stdin (the user's terminal, usually) to the pty and the pty's
	// output to Stdout; Stderr is not used, a terminal merges it into the
	// output. The pty takes its window size from Stdin (or Stdout) at the
	// start and again on each SIGWINCH sent to the command with Signal.
	// The user's side is the caller's to set up: put the terminal in raw
	// mode, so that keys like ^C reach the pty unprocessed.
	TTY bool
	// Stdin, Stdout and Stderr become the command's fds 0, 1 and 2; nil
	// means /dev/null.
	Stdin, Stdout, Stderr *os.File

	// Net chooses the network namespace; see NetMode.
	Net NetMode
	// Iface configures the TAP device; required for NetBridge, ignored
	// otherwise.
	Iface *Iface

	// ResolvConf and Hosts, when non-nil, are bind-mounted read-only over
	// /etc/resolv.conf and /etc/hosts inside; the host's files are not
	// touched. They travel over the control channel, so together with Args
	// and Env they must stay under 64 KiB.
	ResolvConf, Hosts []byte

	// Bypass, when set, gives the sandbox's own TCP and UDP connections
	// to destinations it accepts host sockets in place of theirs (see
	// bypass.go); NetBridge only.
	Bypass BypassRoute
	// Logger receives the agent's warnings (for example a /sys that could
	// not be remounted); nil discards them.
	Logger *slog.Logger
}

// ExecSpec describes a further command to run inside a running sandbox
// (docker exec). Its fields mean what the same fields of Spec mean.
type ExecSpec struct {
	Args                  []string
	Env                   []string
	Dir                   string
	TTY                   bool
	Stdin, Stdout, Stderr *os.File
}

// maxHostname is the kernel's limit (HOST_NAME_MAX).
const maxHostname = 64

// validate reports the first thing wrong with s, naming the field.
func (s *Spec) validate() error {
	if len(s.Args) == 0 || s.Args[0] == "" {
		return errors.New("no command: Spec.Args is empty")
	}
	if len(s.Hostname) > maxHostname {
		return fmt.Errorf("hostname %q is longer than %d bytes", s.Hostname, maxHostname)
	}
	if s.TTY && s.Stdin == nil {
		return errors.New("TTY needs Stdin to be a terminal, got nil")
	}
	if s.Bypass != nil && s.Net != NetBridge {
		return fmt.Errorf("bypass needs a bridge network, not %v", s.Net)
	}
	switch s.Net {
	case NetNone, NetHost:
		return nil
	case NetBridge:
		return s.Iface.validate()
	}
	return fmt.Errorf("unknown network mode %d: use NetBridge, NetNone or NetHost", int(s.Net))
}

func (i *Iface) validate() error {
	if i == nil {
		return errors.New("bridge network needs Spec.Iface (name, MAC, address)")
	}
	if i.Name == "" || len(i.Name) >= 16 {
		return fmt.Errorf("interface name %q: want 1 to 15 bytes, e.g. eth0", i.Name)
	}
	if i.MAC.IsMulticast() || i.MAC == (vswitch.MAC{}) {
		return fmt.Errorf("interface %s: MAC %v is not a unicast address", i.Name, i.MAC)
	}
	if !i.Addr.IsValid() || i.Addr.Addr() == i.Addr.Masked().Addr() {
		return fmt.Errorf("interface %s: address %v is not a host address with a prefix, e.g. 172.17.0.2/16", i.Name, i.Addr)
	}
	if i.Gateway.IsValid() && (!i.Addr.Contains(i.Gateway) || i.Gateway == i.Addr.Addr()) {
		return fmt.Errorf("interface %s: gateway %v is not another address in %v", i.Name, i.Gateway, i.Addr.Masked())
	}
	if i.MTU != 0 && (i.MTU < 68 || i.MTU > 65535) {
		return fmt.Errorf("interface %s: MTU %d outside 68..65535", i.Name, i.MTU)
	}
	return nil
}

func (e *ExecSpec) validate() error {
	if len(e.Args) == 0 || e.Args[0] == "" {
		return errors.New("no command: ExecSpec.Args is empty")
	}
	if e.TTY && e.Stdin == nil {
		return errors.New("TTY needs Stdin to be a terminal, got nil")
	}
	return nil
}
