package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Run creates a sandbox in these steps; each one that makes something
// pushes its undo, and any failure runs the undos in reverse order, so a
// failed Run leaves nothing behind:
//
//  1. validate the request and plan its ports (plan)
//  2. reserve the name and, on a bridge network, allocate an address
//  3. write the sandbox's directory: hosts, resolv.conf, log file
//  4. start the sandbox (new namespaces, the agent, the command)
//  5. attach its TAP to the network's switch
//  6. publish its ports on the host
//  7. record sandbox, endpoint and address in one transaction
//  8. watch for the command's exit (finish releases 5, 6 and 2)

// hostModeWarning is Docker's warning for -p with --network host.
const hostModeWarning = "Published ports are discarded when using host network mode"

// noneModeWarning is the same warning for --network none, where a port
// has nowhere to go either.
const noneModeWarning = "Published ports are discarded when using none network mode"

// internalWarning is the same warning for an internal network, which
// nothing outside it reaches (Docker publishes nothing there either).
const internalWarning = "Published ports are discarded on internal network %s"

// plan is a validated RunConfig.
type plan struct {
	name    string // "" = pick a random one
	spec    runSpec
	publish []PortBinding // ports to publish, -P ones with HostPort 0
}

// makePlan validates cfg and applies defaults. It changes nothing.
func (e *Engine) makePlan(cfg RunConfig) (plan, []string, error) {
	var warnings []string
	p := plan{spec: runSpec{
		Hostname:    cfg.Hostname,
		Args:        slices.Clone(cfg.Args),
		Env:         withDefaultPath(cfg.Env),
		TTY:         cfg.TTY,
		Interactive: cfg.Interactive,
		Detach:      cfg.Detach,
		AutoRemove:  cfg.AutoRemove,
		PublishAll:  cfg.PublishAll,
		DNS:         slices.Clone(cfg.DNS),
		DNSSearch:   slices.Clone(cfg.DNSSearch),
		ExtraHosts:  slices.Clone(cfg.ExtraHosts),
		Bypass:      cfg.Bypass,
	}}
	if len(cfg.Args) == 0 || cfg.Args[0] == "" {
		return plan{}, nil, errorf(ErrInvalid, "no command given: usage is run [OPTIONS] CMD [ARGS...]")
	}
	if cfg.Name != "" {
		n, err := checkName(cfg.Name)
		if err != nil {
			return plan{}, nil, err
		}
		p.name = n
	}
	if h := cfg.Hostname; h != "" && (len(h) > 64 || strings.ContainsAny(h, " \t\n/\x00")) {
		return plan{}, nil, errorf(ErrInvalid, "invalid hostname %q: use at most 64 letters, digits, '-' and '.'", h)
	}
	for i, kv := range cfg.Env {
		if k, _, _ := strings.Cut(kv, "="); k == "" {
			return plan{}, nil, errorf(ErrInvalid, "invalid environment entry %d %q: use KEY=VALUE", i, kv)
		}
	}
	for _, a := range cfg.DNS {
		if !a.IsValid() || a.IsUnspecified() {
			return plan{}, nil, errorf(ErrInvalid, "invalid --dns address %q: give a nameserver's IP address", a)
		}
	}
	for _, d := range cfg.DNSSearch {
		if d == "" || strings.ContainsAny(d, " \t\n") {
			return plan{}, nil, errorf(ErrInvalid, "invalid --dns-search domain %q", d)
		}
	}
	for _, h := range cfg.ExtraHosts {
		if h.Host == "" || strings.ContainsAny(h.Host, " \t\n:") || !h.IP.IsValid() {
			return plan{}, nil, errorf(ErrInvalid, "invalid --add-host %s:%v: use NAME:IP", h.Host, h.IP)
		}
	}

	if strings.HasPrefix(cfg.Network, "container:") {
		return plan{}, nil, errorf(ErrInvalid, "network mode %q: container: mode is not supported yet; use bridge, host or none", cfg.Network)
	}
	netKey := cfg.Network
	if netKey == "" || netKey == "default" {
		netKey = "bridge"
	}
	net, err := e.resolveNetworkLocked(netKey)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return plan{}, nil, errorf(ErrNotFound, "network %s not found: create it (network create %s) or use bridge, host, none or one that network ls lists", cfg.Network, cfg.Network)
		}
		return plan{}, nil, err
	}
	p.spec.NetworkID = net.rec.ID
	p.spec.NetworkName = net.rec.Name
	switch net.rec.Driver {
	case "host":
		p.spec.Network = modeHost
	case "null":
		p.spec.Network = modeNone
	default:
		p.spec.Network = modeBridge
	}
	switch {
	case cfg.Bypass && p.spec.Network != modeBridge:
		return plan{}, nil, errorf(ErrInvalid, "--bypass needs a bridge network, and %s is %s: drop --bypass or pick a bridge network", net.rec.Name, p.spec.Network)
	case cfg.Bypass && net.rec.Internal:
		return plan{}, nil, errorf(ErrInvalid, "--bypass on internal network %s: it has no way out to bypass to; drop --bypass", net.rec.Name)
	}

	// Ports: normalize, collect exposed ports, and plan what to publish.
	exposed := make(map[PortProto]bool)
	for _, x := range cfg.Expose {
		pp, err := normPortProto(x.Port, x.Proto, "--expose "+x.String())
		if err != nil {
			return plan{}, nil, err
		}
		exposed[pp] = true
	}
	bound := make(map[PortProto]bool)
	for _, b := range cfg.Ports {
		pp, err := normPortProto(b.ContainerPort, b.Proto, "-p "+describeBinding(b))
		if err != nil {
			return plan{}, nil, err
		}
		if b.HostIP.IsValid() && b.HostIP.Zone() != "" {
			return plan{}, nil, errorf(ErrInvalid, "invalid host address in -p %s: drop the zone", describeBinding(b))
		}
		b.Proto = pp.Proto
		exposed[pp] = true
		bound[pp] = true
		p.spec.Ports = append(p.spec.Ports, b)
	}
	for pp := range exposed {
		p.spec.Exposed = append(p.spec.Exposed, pp)
	}
	slices.SortFunc(p.spec.Exposed, comparePortProto)
	p.publish = slices.Clone(p.spec.Ports)
	if cfg.PublishAll {
		for _, pp := range p.spec.Exposed {
			if !bound[pp] {
				p.publish = append(p.publish, PortBinding{ContainerPort: pp.Port, Proto: pp.Proto})
			}
		}
	}
	if len(p.publish) > 0 && (p.spec.Network != modeBridge || net.rec.Internal) {
		switch {
		case p.spec.Network == modeHost:
			warnings = append(warnings, hostModeWarning)
		case p.spec.Network == modeNone:
			warnings = append(warnings, noneModeWarning)
		default:
			warnings = append(warnings, fmt.Sprintf(internalWarning, net.rec.Name))
		}
		p.publish = nil
	}
	return p, warnings, nil
}

// normPortProto validates a port and defaults its protocol to tcp.
func normPortProto(port uint16, proto, what string) (PortProto, error) {
	proto = strings.ToLower(proto)
	if proto == "" {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return PortProto{}, errorf(ErrInvalid, "invalid protocol %q in %s: use tcp or udp", proto, what)
	}
	if port == 0 {
		return PortProto{}, errorf(ErrInvalid, "invalid port 0 in %s: give a container port from 1 to 65535", what)
	}
	return PortProto{Port: port, Proto: proto}, nil
}

// describeBinding formats b as the -p value it came from.
func describeBinding(b PortBinding) string {
	s := fmt.Sprint(b.ContainerPort)
	switch {
	case b.HostIP.IsValid():
		host := ""
		if b.HostPort != 0 {
			host = fmt.Sprint(b.HostPort)
		}
		s = fmt.Sprintf("%v:%s:%s", b.HostIP, host, s) // Docker's IP::PORT when the host port is free
	case b.HostPort != 0:
		s = fmt.Sprintf("%d:%s", b.HostPort, s)
	}
	if b.Proto != "" {
		s += "/" + b.Proto
	}
	return s
}

func comparePortProto(a, b PortProto) int {
	return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
}

// portKey formats a port as Docker's map keys: "80/tcp".
func portKey(port uint16, proto string) string {
	if proto == "" {
		proto = "tcp"
	}
	return fmt.Sprintf("%d/%s", port, proto)
}

// undoStack collects the undo of every step that succeeded.
type undoStack []func()

func (u *undoStack) push(f func()) { *u = append(*u, f) }

// run calls the undos in reverse order.
func (u undoStack) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

func (e *Engine) run(ctx context.Context, cfg RunConfig) (id string, warnings []string, err error) {
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run()
			id, warnings = "", nil
		}
	}()

	// 1-2. Validate, reserve the name, allocate the address.
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return "", nil, errClosed
	}
	p, warnings, err := e.makePlan(cfg)
	if err != nil {
		e.mu.Unlock()
		return "", nil, err
	}
	id = newID()
	name := p.name
	if name == "" {
		name = randomName(func(n string) bool { _, ok := e.names[n]; return ok })
	} else if other, ok := e.names[name]; ok {
		e.mu.Unlock()
		return "", nil, errorf(ErrConflict, "the name %q is already in use by sandbox %s: remove it (rm %s) or choose another --name", name, shortID(other), name)
	}
	e.names[name] = id
	undo.push(func() { e.mu.Lock(); delete(e.names, name); e.mu.Unlock() })
	net := e.networks[p.spec.NetworkID]
	var addr netip.Addr
	if p.spec.Network == modeBridge {
		addr, err = net.ipam.Allocate(id)
		if err != nil {
			e.mu.Unlock()
			return "", nil, fmt.Errorf("network %s: %w", net.rec.Name, err)
		}
		undo.push(func() { e.mu.Lock(); net.ipam.Release(addr); e.mu.Unlock() })
	}
	e.mu.Unlock()

	// 3. Files.
	spec := &p.spec
	if spec.Hostname == "" {
		spec.Hostname = shortID(id)
		if spec.Network == modeHost {
			if h, err := e.deps.hostname(); err == nil {
				spec.Hostname = h
			}
		}
	}
	rec := containerRecord{
		ID:      id,
		Name:    name,
		Created: e.now().UTC(),
		Spec:    *spec,
		State:   stateRecord{Status: "created"},
	}
	launch, err := e.prepareFiles(cfg, &rec, net, addr, &undo)
	if err != nil {
		return "", nil, err
	}
	stdio, err := e.openStdio(cfg, rec.LogPath, rec.StderrLogPath)
	if err != nil {
		return "", nil, err
	}
	launch.Stdin, launch.Stdout, launch.Stderr = stdio[0], stdio[1], stdio[2]

	// 4. Start the sandbox. Our copies of its stdio are not needed once it
	// holds its own.
	proc, err := e.deps.launcher.Launch(ctx, launch)
	closeOwned(stdio, cfg)
	if errors.Is(err, ErrInvalid) {
		return "", nil, fmt.Errorf("start sandbox %s: %w: check the command's name and PATH", name, err)
	}
	if err != nil {
		return "", nil, fmt.Errorf("start sandbox %s: %w", name, err)
	}
	undo.push(func() {
		// Close kills every process in the sandbox and waits for them.
		if err := proc.Close(); err != nil {
			e.log.Debug("rollback: close sandbox", "sandbox", name, "err", err)
		}
	})
	c := &container{net: net, proc: proc, done: make(chan struct{})}
	rec.State.Status = "running"
	rec.State.Pid = proc.Pid()
	rec.State.StartedAt = e.now().UTC()

	// 5-6. Attach to the switch, publish ports.
	if spec.Network == modeBridge {
		ep := &endpointRecord{ID: newID(), NetworkID: net.rec.ID, Addr: addr, MAC: formatMAC(macFor(addr))}
		rec.Endpoint = ep
		tap := proc.TAP()
		if tap == nil {
			return "", nil, fmt.Errorf("start sandbox %s: the sandbox sent no TAP device for eth0", name)
		}
		c.detach, err = net.br.Attach("tap:"+name, tap, macFor(addr), addr, proc.DirectSockets)
		if err != nil {
			return "", nil, fmt.Errorf("attach sandbox %s to network %s: %w", name, net.rec.Name, err)
		}
		undo.push(c.detach)
		for _, b := range p.publish {
			m, err := net.br.Publish(PortMapping{
				ContainerPort: b.ContainerPort,
				Proto:         b.Proto,
				HostIP:        cmp.Or(b.HostIP, netip.IPv4Unspecified()),
				HostPort:      b.HostPort,
			}, netip.AddrPortFrom(addr, b.ContainerPort))
			if errors.Is(err, ErrConflict) {
				return "", nil, fmt.Errorf("publish port %s: %w: choose another host port, or leave it out to pick a free one", describeBinding(b), err)
			}
			if err != nil {
				return "", nil, fmt.Errorf("publish port %s: %w", describeBinding(b), err)
			}
			undo.push(func() {
				if err := net.br.Unpublish(m, netip.AddrPortFrom(addr, m.ContainerPort)); err != nil {
					e.log.Warn("rollback: unpublish", "port", m.String(), "err", err)
				}
			})
			ep.Ports = append(ep.Ports, m)
		}
	} else {
		rec.Endpoint = &endpointRecord{ID: newID(), NetworkID: net.rec.ID}
	}

	// 7. Record it all in one transaction.
	c.rec = rec
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return "", nil, errClosed
	}
	err = e.store.update(func(t txn) error {
		if addr.IsValid() {
			if err := t.allocate(net.rec.ID, addr, id); err != nil {
				return err
			}
		}
		return t.putContainer(rec)
	})
	if err != nil {
		e.mu.Unlock()
		return "", nil, fmt.Errorf("record sandbox %s: %w", name, err)
	}
	e.containers[id] = c
	e.mu.Unlock()

	// 8. Watch.
	e.log.Info("sandbox started", "sandbox", name, "id", shortID(id), "network", spec.Network,
		"addr", addr, "pid", rec.State.Pid, "ports", len(rec.Endpoint.Ports))
	go e.watch(c)
	return id, warnings, nil
}

// prepareFiles creates the sandbox's directory with its generated hosts
// and resolv.conf and its log file, fills the paths into rec, and returns
// the launch spec without stdio.
func (e *Engine) prepareFiles(cfg RunConfig, rec *containerRecord, net *network, addr netip.Addr, undo *undoStack) (launchSpec, error) {
	spec := rec.Spec
	dir := e.sandboxDir(rec.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return launchSpec{}, fmt.Errorf("create sandbox directory: %w", err)
	}
	undo.push(func() { e.removeFiles(rec.ID) })
	ls := launchSpec{
		Logger:   e.log.With("sandbox", rec.Name),
		Args:     spec.Args,
		Env:      launchEnv(spec),
		Hostname: spec.Hostname,
		TTY:      withTerminal(cfg),
		Mode:     spec.Network,
	}
	switch spec.Network {
	case modeBridge:
		ls.Iface = &launchIface{
			Name:    "eth0",
			MAC:     macFor(addr),
			Addr:    netip.PrefixFrom(addr, net.rec.Subnet.Bits()),
			Gateway: net.rec.Gateway,
			MTU:     net.rec.MTU,
		}
		ls.Hosts = sandboxHosts(spec.ExtraHosts, addr, spec.Hostname)
		ls.ResolvConf = e.resolvConfFor(spec, net.rec.Gateway)
		if spec.Bypass {
			ls.Bypass = net.br.Bypass
		}
	case modeNone:
		ls.Hosts = sandboxHosts(spec.ExtraHosts, netip.Addr{}, spec.Hostname)
		ls.ResolvConf = e.resolvConfFor(spec, netip.Addr{})
	case modeHost:
		// The host's own files work in the host's netns; rewrite them only
		// when asked to add something.
		if len(spec.ExtraHosts) > 0 {
			host, err := e.deps.readFile("/etc/hosts")
			if err != nil {
				return launchSpec{}, fmt.Errorf("read the host's /etc/hosts: %w", err)
			}
			ls.Hosts = hostModeHosts(host, spec.ExtraHosts)
		}
		if len(spec.DNS) > 0 || len(spec.DNSSearch) > 0 {
			ls.ResolvConf = e.resolvConfFor(spec, netip.Addr{})
		}
	}
	if ls.Hosts != nil {
		rec.HostsPath = filepath.Join(dir, "hosts")
		if err := os.WriteFile(rec.HostsPath, ls.Hosts, 0o644); err != nil {
			return launchSpec{}, fmt.Errorf("write hosts: %w", err)
		}
	}
	if ls.ResolvConf != nil {
		rec.ResolvConfPath = filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(rec.ResolvConfPath, ls.ResolvConf, 0o644); err != nil {
			return launchSpec{}, fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	rec.LogPath = filepath.Join(dir, "stdout.log")
	rec.StderrLogPath = filepath.Join(dir, "stderr.log")
	return ls, nil
}

// resolvConfFor builds a sandbox's resolv.conf; gateway is the fallback
// nameserver (invalid for none and host, where the host's nameservers are
// kept whatever they are).
func (e *Engine) resolvConfFor(spec runSpec, gateway netip.Addr) []byte {
	data, err := e.deps.readFile(e.cfg.HostResolvConf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		e.log.Warn("read the host's resolver configuration", "path", e.cfg.HostResolvConf, "err", err)
	}
	host := parseResolvConf(data)
	if !gateway.IsValid() {
		// No gateway to fall back to: keep the host's servers, only
		// replacing them with --dns.
		out := resolvConf{Nameservers: host.Nameservers, Search: host.Search, Options: host.Options}
		if len(spec.DNS) > 0 {
			out.Nameservers = spec.DNS
		}
		if len(spec.DNSSearch) > 0 {
			out.Search = spec.DNSSearch
		}
		return formatResolvConf(out)
	}
	b, note := sandboxResolvConf(host, spec.DNS, spec.DNSSearch, gateway)
	if note != "" {
		e.log.Info("resolv.conf: " + note)
	}
	return b
}

// formatResolvConf writes rc in resolv.conf syntax.
func formatResolvConf(rc resolvConf) []byte {
	var b strings.Builder
	b.WriteString("# Generated by usernet.\n")
	for _, a := range rc.Nameservers {
		fmt.Fprintf(&b, "nameserver %v\n", a)
	}
	if len(rc.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(rc.Search, " "))
	}
	if len(rc.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(rc.Options, " "))
	}
	return []byte(b.String())
}

// openStdio returns the command's fds 0, 1 and 2: the stdout and stderr
// log files (created for every sandbox, so Logs always has something to
// open) for a detached one, the caller's files otherwise, /dev/null where
// there is nothing. Separate files keep the streams apart, as docker logs
// does, at the cost of their relative order.
func (e *Engine) openStdio(cfg RunConfig, stdoutPath, stderrPath string) ([3]*os.File, error) {
	var fds [3]*os.File
	outf, err := os.OpenFile(stdoutPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fds, fmt.Errorf("create log file: %w", err)
	}
	errf, err := os.OpenFile(stderrPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		outf.Close()
		return fds, fmt.Errorf("create log file: %w", err)
	}
	if cfg.Detach {
		null, err := os.Open(os.DevNull)
		if err != nil {
			outf.Close()
			errf.Close()
			return fds, fmt.Errorf("open %s: %w", os.DevNull, err)
		}
		return [3]*os.File{null, outf, errf}, nil
	}
	outf.Close()
	errf.Close()
	fds = [3]*os.File{cfg.Stdin, cfg.Stdout, cfg.Stderr}
	if !cfg.Interactive && !withTerminal(cfg) {
		// Without -i the command must not read the user's input; with
		// -t the terminal stays the input of the command's pty.
		fds[0] = nil
	}
	for i, f := range fds {
		if f != nil {
			continue
		}
		flag := os.O_WRONLY
		if i == 0 {
			flag = os.O_RDONLY
		}
		null, err := os.OpenFile(os.DevNull, flag, 0)
		if err != nil {
			closeOwned(fds, cfg)
			return [3]*os.File{}, fmt.Errorf("open %s: %w", os.DevNull, err)
		}
		fds[i] = null
	}
	return fds, nil
}

// closeOwned closes the stdio files that openStdio opened itself (never
// the caller's).
func closeOwned(fds [3]*os.File, cfg RunConfig) {
	mine := func(f *os.File) bool {
		return f != nil && f != cfg.Stdin && f != cfg.Stdout && f != cfg.Stderr
	}
	seen := make(map[*os.File]bool)
	for _, f := range fds {
		if mine(f) && !seen[f] {
			seen[f] = true
			f.Close()
		}
	}
}

// watch waits for c's command to exit and then releases what it held.
func (e *Engine) watch(c *container) {
	code, err := c.proc.Wait()
	if cerr := c.proc.Close(); cerr != nil {
		e.log.Debug("close sandbox", "sandbox", c.rec.Name, "err", cerr)
	}
	e.finish(c, code, err)
}

// defaultPath is the PATH a command gets unless -e sets one, Docker's
// default for images without their own.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// withDefaultPath returns env with defaultPath in front unless env sets
// PATH. The sandbox never inherits the daemon's environment.
func withDefaultPath(env []string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return slices.Clone(env)
		}
	}
	return append([]string{defaultPath}, env...)
}

// launchEnv is the command's environment: the recorded one plus, as
// Docker adds them, HOSTNAME and, with a terminal, TERM=xterm, unless -e
// set them.
func launchEnv(spec runSpec) []string {
	env := slices.Clone(spec.Env)
	has := func(k string) bool {
		return slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
	}
	if !has("HOSTNAME") {
		env = append(env, "HOSTNAME="+spec.Hostname)
	}
	if spec.TTY && !has("TERM") {
		env = append(env, "TERM=xterm")
	}
	return env
}

// finish releases a sandbox whose command has exited: its published ports
// and switch port first (so the host port and address are free before
// anyone can observe the exit), then its address and record in one
// transaction, removing the record for --rm.
func (e *Engine) finish(c *container, code int, waitErr error) {
	e.mu.Lock()
	ep := c.rec.Endpoint
	e.mu.Unlock()
	if ep != nil {
		for _, m := range ep.Ports {
			if err := c.net.br.Unpublish(m, netip.AddrPortFrom(ep.Addr, m.ContainerPort)); err != nil {
				e.log.Warn("unpublish", "sandbox", c.rec.Name, "port", m.String(), "err", err)
			}
		}
	}
	if c.detach != nil {
		c.detach()
	}

	e.mu.Lock()
	defer close(c.done)
	defer e.mu.Unlock()
	rec := &c.rec
	rec.State.Status = "exited"
	rec.State.Pid = 0
	rec.State.ExitCode = code
	rec.State.FinishedAt = e.now().UTC()
	if waitErr != nil {
		rec.State.Error = waitErr.Error()
	}
	rec.Endpoint = nil
	if ep != nil && ep.Addr.IsValid() {
		c.net.ipam.Release(ep.Addr)
	}
	e.log.Info("sandbox exited", "sandbox", rec.Name, "id", shortID(rec.ID), "code", code, "err", waitErr)
	if e.closing {
		return
	}
	remove := rec.Spec.AutoRemove
	err := e.store.update(func(t txn) error {
		if ep != nil && ep.Addr.IsValid() {
			if err := t.release(ep.NetworkID, ep.Addr); err != nil {
				return err
			}
		}
		if remove {
			return t.deleteContainer(rec.ID)
		}
		return t.putContainer(*rec)
	})
	if err != nil {
		e.log.Error("record sandbox exit", "sandbox", rec.Name, "err", err)
	}
	if remove {
		delete(e.containers, rec.ID)
		delete(e.names, rec.Name)
		e.tombs.add(rec.ID, code)
		e.removeFiles(rec.ID)
	}
}

// withTerminal reports whether the command runs on a pty relayed to the
// user's terminal: -t in the foreground with a terminal as stdin. A detached sandbox has no
// terminal to attach (the log file is not one), so -d -t records Tty but
// runs without one.
func withTerminal(cfg RunConfig) bool {
	return cfg.TTY && !cfg.Detach && cfg.Stdin != nil && isTerminal(cfg.Stdin)
}

// isTerminal reports whether f is a terminal. It uses SyscallConn rather
// than Fd, which would switch f to blocking mode.
func isTerminal(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	rc.Control(func(fd uintptr) {
		_, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		ok = err == nil
	})
	return ok
}
