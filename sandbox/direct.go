package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Direct sockets carry published-port connections into a sandbox without
// the network's gateway: the daemon connects one of them to the sandbox's
// own address and splices it to the host client's socket, so the bytes
// move kernel to kernel, as pasta's loopback path does. The client's
// source address survives, because the socket is bound (transparently) to
// the address the gateway would have used:
//
//   - A socket is made by the agent, inside the sandbox's network namespace
//     (sockets belong to the namespace they were made in), with the two
//     options only a namespace's root may set: IP_TRANSPARENT, to bind to
//     an address the namespace does not own (the client's or the
//     gateway's), and SO_MARK directMark. Both are checked at setsockopt
//     time, so the unprivileged daemon can bind and connect it later.
//   - The SYN goes to the sandbox's own address, which is local: it loops
//     back through lo.
//   - With net.ipv4.tcp_fwmark_accept the server's accepted socket inherits
//     the SYN's mark (and with net.ipv4.fwmark_reflect so do the kernel's
//     own answers, such as the RST from a port nothing listens on), and
//     the rule "fwmark directMark lookup directTable" sends its replies,
//     addressed to the client's address, to a table whose only route is
//     "local 0.0.0.0/0 dev lo": they loop back too, to the transparent
//     socket, instead of leaving through eth0 to a gateway that never saw
//     the connection.
//
// Nothing else in the sandbox carries the mark, so its own traffic routes
// as before. The agent sets the routing up on the first request only, so
// sandboxes without published ports never have it.

const (
	// directMark is the mark direct sockets carry ("ue" for usernet).
	directMark = 0x7565
	// directTable is the routing table marked replies are looked up in.
	directTable = 117
	// directRulePref is the rule's priority: after the local table's
	// (0), before main's (32766).
	directRulePref = 100
	// maxDirectBatch bounds the sockets one request asks for.
	maxDirectBatch = 32
)

// DirectSockets asks the agent for n (1..32) sockets made inside the
// sandbox's network namespace for published-port connections (see
// direct.go): IPv4 TCP, non-blocking, unbound, with IP_TRANSPARENT and the
// mark that routes replies back to them, SO_REUSEADDR and
// IP_BIND_ADDRESS_NO_PORT. The caller owns the files; it
// may set more options, then bind and connect each once. The agent may
// send fewer than n. It fails for a sandbox without its own network
// (NetHost) and when the agent cannot set the routing up, which the
// caller should take as "use the gateway" for the sandbox's lifetime.
func (s *Sandbox) DirectSockets(ctx context.Context, n int) ([]*os.File, error) {
	if s.netMode == NetHost {
		return nil, errors.New("sandbox direct sockets: the sandbox uses the host's network namespace")
	}
	if n < 1 || n > maxDirectBatch {
		return nil, fmt.Errorf("sandbox direct sockets: asked for %d, want 1 to %d", n, maxDirectBatch)
	}
	return s.request(ctx, &message{Kind: kindDirect, Count: n}, &pending{
		op:    "sandbox direct sockets",
		reply: kindSockets,
		check: checkDirectSocket,
	})
}

// checkDirectSocket verifies that f is what the agent should have sent:
// an IPv4 TCP socket with the direct mark and IP_TRANSPARENT. It runs for
// every published connection, so its calls are raw (rawsys.go).
func checkDirectSocket(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var bad error
	err = rc.Control(func(fd uintptr) {
		for _, c := range []struct {
			level, opt, want int
			name             string
		}{
			{unix.SOL_SOCKET, unix.SO_DOMAIN, unix.AF_INET, "domain"},
			{unix.SOL_SOCKET, unix.SO_TYPE, unix.SOCK_STREAM, "type"},
			{unix.SOL_SOCKET, unix.SO_PROTOCOL, unix.IPPROTO_TCP, "protocol"},
			{unix.SOL_SOCKET, unix.SO_MARK, directMark, "mark"},
			{unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"},
		} {
			v, err := rawGetsockoptInt(int(fd), c.level, c.opt)
			if err != nil {
				bad = fmt.Errorf("agent sent fd that is not a socket: %w", err)
				return
			}
			if v != c.want {
				bad = fmt.Errorf("agent sent a socket with %s %d, want %d", c.name, v, c.want)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return bad
}

// directSockets answers a direct request inside the sandbox: it sets the
// routing up once, then makes the sockets. They are bare descriptors,
// never *os.File: a file would register each with the agent's poller
// only to unregister it when the agent closes its copy, which made up a
// fifth of the agent's CPU at a few thousand connections a second.
func (a *agent) directSockets(n int) ([]int, error) {
	if a.net != NetBridge {
		return nil, fmt.Errorf("direct sockets need the sandbox's own network (mode %v)", a.net)
	}
	if !a.directReady {
		if err := setupDirect(); err != nil {
			return nil, fmt.Errorf("route published ports directly: %w", err)
		}
		a.directReady = true
	}
	fds := make([]int, 0, n)
	for range n {
		fd, err := directSocket()
		if err != nil {
			closeFDs(fds)
			return nil, err
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// directSocket makes one socket with the options the daemon cannot set,
// and two it could but would pay a syscall each for on every connection:
// SO_REUSEADDR (a client's address and port may connect to two published
// ports at once) and IP_BIND_ADDRESS_NO_PORT (a bind to port 0 leaves
// the choice to connect, which may share ports across destinations).
// The calls are raw (rawsys.go): none blocks, and through the scheduler's
// syscall path each woke sysmon.
func directSocket() (int, error) {
	fd, err := rawSocket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, fmt.Errorf("direct socket: %w", err)
	}
	for _, o := range []struct {
		level, opt, value int
		name              string
	}{
		{unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"},
		{unix.SOL_SOCKET, unix.SO_MARK, directMark, "SO_MARK"},
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"},
		{unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1, "IP_BIND_ADDRESS_NO_PORT"},
	} {
		if err := rawSetsockoptInt(fd, o.level, o.opt, o.value); err != nil {
			rawClose(fd)
			return -1, fmt.Errorf("direct socket: %s: %w", o.name, err)
		}
	}
	return fd, nil
}

// closeFDs closes bare descriptors.
func closeFDs(fds []int) {
	for _, fd := range fds {
		rawClose(fd)
	}
}

// setupDirect turns on tcp_fwmark_accept and adds the rule and the table
// that loop marked replies back (see the top of this file). Each step that
// finds its work already done (the command may have done it) is fine.
//
// fwmark_reflect gives the kernel's own answers to a marked packet (the
// RST for a port nothing listens on, ICMP errors) the same mark, so they
// too loop back: without it the RST for a closed port left through eth0,
// the socket never heard of it, and the client waited out the SYN retries
// instead of being refused at once.
//
// It also sets tcp_tw_reuse to 1. Direct sockets close first when the
// client does, so each leaves a TIME_WAIT inside the sandbox, all towards
// the same few service ports from the gateway's address; at a few
// thousand connections a second the ephemeral ports run out within the
// minute TIME_WAIT lasts (connect slows to a crawl scanning for a free
// one, then fails). Reuse lets connect take a port whose TIME_WAIT is
// more than a second old, which TCP timestamps make safe; it changes
// nothing for connections into the sandbox.
func setupDirect() error {
	for _, s := range []struct{ name, value string }{
		{"tcp_fwmark_accept", "1"},
		{"fwmark_reflect", "1"},
		{"tcp_tw_reuse", "1"},
	} {
		if err := os.WriteFile("/proc/sys/net/ipv4/"+s.name, []byte(s.value+"\n"), 0); err != nil {
			return fmt.Errorf("set net.ipv4.%s: %w", s.name, err)
		}
	}
	nl, err := dialRoute()
	if err != nil {
		return err
	}
	defer nl.close()
	if err := nl.addMarkRule(directMark, directTable, directRulePref); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add rule fwmark %#x lookup %d: %w", directMark, directTable, err)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := nl.addLocalDefault(lo.Index, directTable); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add route local 0.0.0.0/0 dev lo table %d: %w", directTable, err)
	}
	return nil
}
