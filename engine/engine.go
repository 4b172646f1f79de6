// Package engine is usernet's control plane: it owns the networks, the
// endpoints that attach sandboxes to them, the sandboxes themselves and
// their published ports, and keeps all of it in a bbolt database so that an
// acknowledged change survives a crash.
//
// The engine wires the data-path packages together. Each bridge network is
// one vswitch.Switch, one stack.Gateway (gVisor netstack, with nat.Outbound
// answering its TCP/UDP/echo forwarders) and one nat.Forwards for published
// ports. Each sandbox started with sandbox.Start on a bridge network hands
// back a TAP fd that becomes a switch port bound to the sandbox's MAC and
// IPv4 address.
//
// Docker's nouns are kept: a Network, an Endpoint (a sandbox's attachment to
// a network: address, MAC, published ports) and a Sandbox (what Docker calls
// a container). The JSON shapes returned by Inspect and NetworkInspect match
// `docker inspect` and `docker network inspect` field for field, so tools
// written for Docker read them unchanged.
//
// All methods of *Engine are safe for concurrent use.
package engine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
)

// Config configures an Engine. The zero value of every field but StateDir
// has a usable default.
type Config struct {
	// StateDir holds state.db (bbolt) and one directory per sandbox
	// (generated hosts and resolv.conf, the log of a detached sandbox).
	// It is created with mode 0700 if missing. Required.
	StateDir string

	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger

	// DisableHostLoopback stops traffic from a sandbox to its gateway's
	// address from reaching services on the host's 127.0.0.1. By default a
	// sandbox reaches the host's loopback through its gateway, as
	// slirp4netns's --disable-host-loopback=false does.
	DisableHostLoopback bool

	// TCPNetstack carries sandboxes' outbound TCP connections through
	// gVisor's netstack and a relay, as before the gateway translated
	// them itself (stack.Config.TranslateTCP): slower, kept to compare
	// and to fall back on.
	TCPNetstack bool

	// Clock returns the current time; nil means time.Now. Tests pass a fake
	// clock so that Status strings ("Up 3 seconds") are deterministic.
	Clock func() time.Time

	// HostResolvConf is the path of the host's resolver configuration that
	// sandboxes' /etc/resolv.conf is derived from; "" means
	// /etc/resolv.conf.
	HostResolvConf string
}

// Sentinel errors that every error the engine returns for bad input or a
// missing object matches with errors.Is, so that the API layer can choose
// a status code (404, 409, 400) without parsing messages. The message of
// the returned error itself names the object and the fix.
var (
	// ErrNotFound: no sandbox or network matches the given name or ID.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request clashes with current state (a name in use, a
	// host port in use, a running sandbox that must be stopped first).
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the request itself is malformed (a bad name, address,
	// protocol, network mode or empty command).
	ErrInvalid = errors.New("invalid argument")

	// ErrCommandNotFound: Run or Exec could not start the command because
	// it does not exist in the sandbox (a shell's exit status 127). Such an
	// error matches ErrInvalid too.
	ErrCommandNotFound = errors.New("command not found")
	// ErrCommandNotExecutable: the command exists but could not be
	// executed (permission denied, a directory, a bad interpreter; a
	// shell's 126). Such an error matches ErrInvalid too.
	ErrCommandNotExecutable = errors.New("command not executable")

	// ErrStateLocked: New could not open the state database because
	// another process (another usernet daemon on another socket, most
	// likely) holds its lock.
	ErrStateLocked = errors.New("state locked by another process")
)

// Engine is the control plane of one usernet daemon. Create it with New and
// release it with Close.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	deps  deps
	store *store

	// mu guards everything below. It is held for in-memory bookkeeping and
	// the bbolt transaction that records a change, never while a sandbox
	// starts or while calling into the switch, gateway or NAT.
	mu         sync.Mutex
	networks   map[string]*network       // by network ID
	pending    map[string]pendingNetwork // NetworkCreates in flight, by the ID they will have
	containers map[string]*container     // by sandbox ID, including Runs in progress
	names      map[string]string         // sandbox name -> ID, including Runs in progress
	tombs      tombstones                // exit codes of recently auto-removed sandboxes
	closing    bool                      // Close has begun: no new sandboxes, no more state writes
}

// New opens (or creates) the state in cfg.StateDir, restores networks and
// sandbox records, and makes sure the default networks exist: "bridge"
// (172.17.0.0/16, gateway 172.17.0.1, driver "bridge"), "host" and "none".
//
// Sandboxes recorded as running belonged to a previous daemon whose agents
// died with it: they are marked Exited (exit code 255, Error
// "daemon restarted") and their addresses and published ports released, in
// one transaction. Records of --rm sandboxes are removed instead.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	return newEngine(ctx, cfg, defaultDeps())
}

// Close stops every running sandbox (SIGKILL), tears down the networks'
// switches, gateways and listeners, and closes the database. The records of
// sandboxes that were running stay as they were, so that the next New
// treats them exactly like after a crash. Close is idempotent.
func (e *Engine) Close() error { return e.close() }

// PortProto is a container port and its protocol, as in "80/tcp".
type PortProto struct {
	Port  uint16
	Proto string // "tcp" or "udp"; "" means "tcp"
}

// String formats p as Docker does: "80/tcp".
func (p PortProto) String() string { return portKey(p.Port, p.Proto) }

// PortBinding is one -p option, after the CLI expanded ranges.
type PortBinding struct {
	// HostIP is the host address to listen on; the zero Addr means all
	// IPv4 addresses (0.0.0.0).
	HostIP netip.Addr
	// HostPort is the host port; 0 picks a free one.
	HostPort uint16
	// ContainerPort is the port inside the sandbox. Required.
	ContainerPort uint16
	// Proto is "tcp" or "udp"; "" means "tcp".
	Proto string
}

// HostEntry is one --add-host NAME:IP entry for the sandbox's /etc/hosts.
type HostEntry struct {
	Host string
	IP   netip.Addr
}

// RunConfig is what `usernet run` asks for. The engine keeps a copy of it
// (minus the files) as the sandbox's configuration.
type RunConfig struct {
	// Name is the sandbox's unique name; "" picks a random Docker-style
	// adjective_surname name. Names match [a-zA-Z0-9][a-zA-Z0-9_.-]+.
	Name string
	// Hostname inside the sandbox; "" means the first 12 hex digits of the
	// ID (as Docker), or the host's hostname with Network "host".
	Hostname string
	// Args is the command and its arguments. Required. The command is
	// looked up inside the sandbox; a missing one fails Run.
	Args []string
	// Env is the command's environment, "K=V" entries.
	Env []string

	// TTY runs the command on a pseudo-terminal of its own inside the
	// sandbox (-t), relayed to Stdin and Stdout, which should then be the
	// user's terminal (in raw mode: the caller's business). Stderr is
	// merged into the terminal's output.
	TTY bool
	// Interactive keeps stdin open (-i); without it the command reads
	// /dev/null.
	Interactive bool
	// Detach (-d) sends stdout and stderr to the sandbox's log file (read
	// with Logs) and stdin to /dev/null; the Stdin/Stdout/Stderr fields are
	// ignored.
	Detach bool
	// AutoRemove (--rm) removes the sandbox's record when its command
	// exits. Wait still reports the exit code afterwards.
	AutoRemove bool

	// Network is "bridge" (also ""), "host" or "none".
	Network string
	// Ports are the -p options. They are discarded, with a warning, for
	// the host and none networks.
	Ports []PortBinding
	// PublishAll (-P) publishes every exposed port (Expose and the
	// container ports of Ports) that Ports does not bind to a free host port.
	PublishAll bool
	// Expose are the --expose ports.
	Expose []PortProto

	// DNS replaces the host's nameservers in /etc/resolv.conf (--dns).
	DNS []netip.Addr
	// DNSSearch replaces the host's search domains (--dns-search).
	DNSSearch []string
	// ExtraHosts are added to /etc/hosts (--add-host).
	ExtraHosts []HostEntry
	// Bypass (--bypass) gives the sandbox's own TCP and UDP connections
	// to the host and beyond host sockets of their own, which the kernel
	// carries at full speed with no daemon in the path
	// (sandbox.BypassRoute). The sandbox sees the host's side of those
	// connections in getsockname. Bridge networks with NAT only.
	Bypass bool

	// Stdin, Stdout and Stderr become the command's fds 0, 1 and 2 when
	// not Detach; nil means /dev/null. The engine does not close them and
	// keeps no reference after Run returns: the sandbox holds its own
	// duplicates, so the caller closes its copies when it likes.
	Stdin, Stdout, Stderr *os.File
}

// Run creates and starts a sandbox and returns its 64-hex-digit ID and any
// warnings for the user (e.g. "Published ports are discarded when using
// host network mode"). On a bridge network the sandbox gets the next free
// address of the network, MAC 02:42 + that address, generated /etc/hosts
// and /etc/resolv.conf, and its published ports are listening when Run
// returns.
//
// On any failure nothing is left behind: no record, address, listener,
// switch port or process. Errors match ErrInvalid, ErrConflict or
// ErrNotFound (unknown network) where the input is at fault.
func (e *Engine) Run(ctx context.Context, cfg RunConfig) (id string, warnings []string, err error) {
	return e.run(ctx, cfg)
}

// Wait blocks until the sandbox's command has exited and returns its exit
// code (128+signal when killed by a signal, as a shell reports it). It
// returns at once for a sandbox that already exited, including a --rm
// sandbox removed a moment ago when nameOrID is its full ID (the engine
// keeps the exit codes of the most recent removals for this). It returns
// ctx.Err() when ctx ends first.
func (e *Engine) Wait(ctx context.Context, nameOrID string) (exitCode int, err error) {
	return e.wait(ctx, nameOrID)
}

// DefaultStopTimeout is how long Stop waits after SIGTERM before SIGKILL
// when StopOptions.Timeout is nil, as `docker stop`.
const DefaultStopTimeout = 10 * time.Second

// StopOptions says how Stop ends a sandbox's command (docker's
// container.StopOptions). The zero value is `docker stop` without -t:
// SIGTERM, then SIGKILL after DefaultStopTimeout.
type StopOptions struct {
	// Timeout, when not nil, is how long to wait after SIGTERM before
	// SIGKILL. Zero kills at once without a SIGTERM (docker stop -t 0, so
	// the exit status is always 137), and a negative value waits as long
	// as the command takes (-t -1). A pointer because zero is a timeout of
	// its own, not "the default".
	Timeout *time.Duration
}

// Stop sends SIGTERM to the sandbox's command, then kills every process
// in the sandbox if it is still running after the timeout opts gives, and
// returns once it has exited and its address and ports are released.
// Stopping a sandbox that is not running is not an error. ctx ending stops
// only the waiting: a SIGKILL already due is not sent.
func (e *Engine) Stop(ctx context.Context, nameOrID string, opts StopOptions) error {
	return e.stop(ctx, nameOrID, opts)
}

// Kill sends sig to the sandbox's command without waiting. It fails with
// ErrConflict if the sandbox is not running.
func (e *Engine) Kill(nameOrID string, sig syscall.Signal) error {
	return e.kill(nameOrID, sig)
}

// Remove deletes a sandbox's record and files. A running sandbox is an
// ErrConflict error naming it and the fix, unless force, which kills it
// (SIGKILL) and waits for it first.
func (e *Engine) Remove(ctx context.Context, nameOrID string, force bool) error {
	return e.remove(ctx, nameOrID, force)
}

// ExecConfig is what `usernet exec` asks for.
type ExecConfig struct {
	// Args is the command and its arguments. Required.
	Args []string
	// Env is added to the command's environment, which starts as the
	// sandbox's run-time one (what its main command got); an entry here
	// overrides the run-time entry with its key, as docker exec does.
	Env []string
	// WorkingDir is the command's working directory; "" keeps the agent's.
	WorkingDir string
	// TTY runs the command on a pseudo-terminal of its own, as
	// RunConfig.TTY.
	TTY bool
	// Stdin, Stdout, Stderr become the command's fds 0, 1 and 2; nil means
	// /dev/null. Ownership as in RunConfig: the caller keeps (and closes)
	// its copies.
	Stdin, Stdout, Stderr *os.File
}

// Process is a command started by Exec inside a sandbox. Its methods are
// safe for concurrent use.
type Process struct {
	proc execProcess
}

// Wait blocks until the command exits and returns its exit code.
func (p *Process) Wait() (exitCode int, err error) { return p.proc.Wait() }

// Signal sends sig to the command.
func (p *Process) Signal(sig syscall.Signal) error { return p.proc.Signal(sig) }

// Exec runs a further command inside a running sandbox's namespaces (the
// sandbox's agent starts it). It fails with ErrConflict if the sandbox is
// not running.
func (e *Engine) Exec(ctx context.Context, nameOrID string, cfg ExecConfig) (*Process, error) {
	return e.exec(ctx, nameOrID, cfg)
}

// ContainerSummary is one row of `usernet ps`.
type ContainerSummary struct {
	// ID is the full 64-hex-digit ID; ps shows its first 12 digits.
	ID string `json:"Id"`
	// Names holds the sandbox's name, without Docker's leading "/".
	Names []string
	// Command is the command line, arguments joined with spaces.
	Command string
	// Created is when Run created the sandbox.
	Created time.Time
	// RunningFor is the age as ps shows it under CREATED: "3 seconds ago".
	RunningFor string
	// State is "running", "exited" or "created".
	State string
	// Status is ps's STATUS column: "Up 3 seconds",
	// "Exited (0) 2 minutes ago".
	Status string
	// Ports is ps's PORTS column: "0.0.0.0:8080->80/tcp, 443/tcp".
	Ports string
	// Networks names the network the sandbox is attached to.
	Networks []string
}

// List returns the running sandboxes, or all of them when all is set,
// newest first (as `docker ps`).
func (e *Engine) List(all bool) []ContainerSummary { return e.list(all) }

// Inspect returns the `docker inspect` view of a sandbox.
func (e *Engine) Inspect(nameOrID string) (ContainerJSON, error) { return e.inspect(nameOrID) }

// LogStream names one of a detached sandbox's two logged streams.
type LogStream string

// The streams Logs can return. A detached sandbox's stdout and stderr go to
// separate files, so that they can be given back apart as docker logs
// does; their relative order is not kept.
const (
	Stdout LogStream = "stdout"
	Stderr LogStream = "stderr"
)

// Logs returns one stream of the output of a detached sandbox. With follow
// the reader keeps returning new output until the sandbox exits and then
// reports io.EOF; Close ends it early. A sandbox run in the foreground
// wrote to the caller's terminal, so its log is empty, and so is the
// stderr of a sandbox from a daemon that logged both streams as stdout.
// Any other stream is an ErrInvalid error.
func (e *Engine) Logs(nameOrID string, stream LogStream, follow bool) (io.ReadCloser, error) {
	return e.logs(nameOrID, stream, follow)
}

// PortMapping is one published port of a running sandbox.
type PortMapping struct {
	ContainerPort uint16
	Proto         string // "tcp" or "udp"
	HostIP        netip.Addr
	HostPort      uint16
}

// String formats m as `docker port` does: "80/tcp -> 0.0.0.0:8080".
func (m PortMapping) String() string {
	return portKey(m.ContainerPort, m.Proto) + " -> " + netip.AddrPortFrom(m.HostIP, m.HostPort).String()
}

// Port returns the published ports of a sandbox (empty when it is not
// running), sorted by container port.
func (e *Engine) Port(nameOrID string) ([]PortMapping, error) { return e.port(nameOrID) }

// Networks returns every network, sorted by name (`docker network ls`).
func (e *Engine) Networks() []NetworkResource { return e.networkList() }

// NetworkCreate creates a user-defined bridge network, brings its data path
// up (switch, gateway, and NAT unless cfg.Internal) and records it, and
// returns its 64-hex-digit ID. The network persists across daemon restarts.
// Bad input is an ErrInvalid error, a name or subnet clashing with another
// network's an ErrConflict error; on any failure nothing is left behind.
func (e *Engine) NetworkCreate(ctx context.Context, cfg NetworkCreateConfig) (id string, err error) {
	return e.networkCreate(ctx, cfg)
}

// NetworkRemove removes the user-defined network with that name, ID or
// unique ID prefix and tears its data path down. A network with a sandbox
// attached (or starting) is an ErrConflict error naming the sandboxes, a
// predefined one (bridge, host, none) an ErrInvalid error. Records of
// exited sandboxes that ran on it are kept, as Docker keeps containers
// whose network was removed.
func (e *Engine) NetworkRemove(nameOrID string) error { return e.networkRemove(nameOrID) }

// NetworkPrune removes every user-defined network no sandbox is attached
// to, in one transaction, and returns their names, sorted (empty, not nil,
// when there were none).
func (e *Engine) NetworkPrune() ([]string, error) { return e.networkPrune() }

// NetworkInspect returns the `docker network inspect` view of the network
// with that name, ID or unique ID prefix.
func (e *Engine) NetworkInspect(nameOrID string) (NetworkResource, error) {
	return e.networkInspect(nameOrID)
}
