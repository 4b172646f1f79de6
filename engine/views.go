package engine

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file builds the read-only views: ps rows, inspect and network
// inspect JSON, port listings. Each takes e.mu once and copies what it
// needs.

func (e *Engine) list(all bool) []ContainerSummary {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	var out []ContainerSummary
	for _, c := range e.containers {
		if !all && !c.running() {
			continue
		}
		r := &c.rec
		s := ContainerSummary{
			ID:         r.ID,
			Names:      []string{r.Name},
			Command:    strings.Join(r.Spec.Args, " "),
			Created:    r.Created,
			RunningFor: humanDuration(now.Sub(r.Created)) + " ago",
			State:      r.State.Status,
			Status:     statusText(r.State, now),
			Ports:      portsText(r),
			Networks:   []string{networkMode(r.Spec)},
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b ContainerSummary) int {
		return cmp.Or(b.Created.Compare(a.Created), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// statusText is ps's STATUS column.
func statusText(s stateRecord, now time.Time) string {
	switch s.Status {
	case "running":
		return "Up " + humanDuration(now.Sub(s.StartedAt))
	case "exited":
		if s.FinishedAt.IsZero() {
			return fmt.Sprintf("Exited (%d)", s.ExitCode)
		}
		return fmt.Sprintf("Exited (%d) %s ago", s.ExitCode, humanDuration(now.Sub(s.FinishedAt)))
	default:
		return "Created"
	}
}

// humanDuration renders d the way Docker's ps does (go-units
// HumanDuration): "Less than a second", "3 seconds", "About a minute",
// "5 minutes", "About an hour", "3 hours", "2 days", "3 weeks",
// "4 months", "2 years".
func humanDuration(d time.Duration) string {
	if seconds := int(d.Seconds()); seconds < 1 {
		return "Less than a second"
	} else if seconds == 1 {
		return "1 second"
	} else if seconds < 60 {
		return fmt.Sprintf("%d seconds", seconds)
	} else if minutes := int(d.Minutes()); minutes == 1 {
		return "About a minute"
	} else if minutes < 60 {
		return fmt.Sprintf("%d minutes", minutes)
	} else if hours := int(d.Hours() + 0.5); hours == 1 {
		return "About an hour"
	} else if hours < 48 {
		return fmt.Sprintf("%d hours", hours)
	} else if hours < 24*7*2 {
		return fmt.Sprintf("%d days", hours/24)
	} else if hours < 24*30*2 {
		return fmt.Sprintf("%d weeks", hours/24/7)
	} else if hours < 24*365*2 {
		return fmt.Sprintf("%d months", hours/24/30)
	}
	return fmt.Sprintf("%d years", int(d.Hours())/24/365)
}

// portsText is ps's PORTS column for a running sandbox, in docker ps's
// format: a published port whose host and container ports are equal reads
// "0.0.0.0:80->80/tcp", and runs of consecutive such ports (or of exposed,
// unpublished ports, "80/tcp") merge into ranges such as
// "0.0.0.0:8000-8002->8000-8002/tcp"; a port published under another
// number reads "127.0.0.1:8080->80/tcp" and comes after the groups.
func portsText(r *containerRecord) string {
	if r.Endpoint == nil {
		// Not running: nothing listens, and Docker shows nothing.
		return ""
	}
	type row struct {
		private, public uint16
		proto, ip       string // ip "" = exposed only
	}
	var rows []row
	published := make(map[PortProto]bool)
	for _, m := range r.Endpoint.Ports {
		published[PortProto{m.ContainerPort, m.Proto}] = true
		rows = append(rows, row{m.ContainerPort, m.HostPort, m.Proto, m.HostIP.String()})
	}
	if r.Spec.Network == modeBridge {
		for _, pp := range r.Spec.Exposed {
			if !published[pp] {
				rows = append(rows, row{private: pp.Port, proto: pp.Proto})
			}
		}
	}
	slices.SortFunc(rows, func(a, b row) int {
		return cmp.Or(cmp.Compare(a.private, b.private), cmp.Compare(a.public, b.public),
			cmp.Compare(a.proto, b.proto), cmp.Compare(a.ip, b.ip))
	})

	// A group is a run of consecutive ports with the same address and
	// protocol; groups print in the order they first appear.
	type group struct {
		ip, proto   string
		first, last uint16
	}
	format := func(g group) string {
		ports := fmt.Sprint(g.first)
		if g.last != g.first {
			ports = fmt.Sprintf("%d-%d", g.first, g.last)
		}
		if g.ip == "" {
			return ports + "/" + g.proto
		}
		return fmt.Sprintf("%s->%s/%s", net.JoinHostPort(g.ip, ports), ports, g.proto)
	}
	var (
		done, renumbered []string
		open             []*group // by first appearance
		current          = make(map[[2]string]*group)
	)
	for _, p := range rows {
		if p.ip != "" && p.public != p.private {
			renumbered = append(renumbered, fmt.Sprintf("%s->%d/%s", net.JoinHostPort(p.ip, fmt.Sprint(p.public)), p.private, p.proto))
			continue
		}
		key := [2]string{p.ip, p.proto}
		g := current[key]
		switch {
		case g == nil:
			g = &group{ip: p.ip, proto: p.proto, first: p.private, last: p.private}
			current[key] = g
			open = append(open, g)
		case p.private == g.last+1:
			g.last = p.private
		default:
			done = append(done, format(*g))
			*g = group{ip: p.ip, proto: p.proto, first: p.private, last: p.private}
		}
	}
	for _, g := range open {
		done = append(done, format(*g))
	}
	return strings.Join(append(done, renumbered...), ", ")
}

// networkMode is the name of the network s runs on, as Docker's
// HostConfig.NetworkMode: bridge, host, none or a user-defined network's.
func networkMode(s runSpec) string {
	if s.NetworkName != "" {
		return s.NetworkName
	}
	return string(s.Network)
}

func comparePortMapping(a, b PortMapping) int {
	return cmp.Or(
		cmp.Compare(a.ContainerPort, b.ContainerPort),
		cmp.Compare(a.Proto, b.Proto),
		a.HostIP.Compare(b.HostIP),
		cmp.Compare(a.HostPort, b.HostPort),
	)
}

func (e *Engine) inspect(nameOrID string) (ContainerJSON, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.lookupLocked(nameOrID)
	if err != nil {
		return ContainerJSON{}, err
	}
	return containerJSON(&c.rec, c.net), nil
}

// containerJSON builds the `docker inspect` view of r, attached to n
// (which may be nil for a record whose network is gone).
func containerJSON(r *containerRecord, n *network) ContainerJSON {
	s := r.Spec
	j := ContainerJSON{
		ID:      r.ID,
		Created: r.Created,
		Path:    s.Args[0],
		Args:    slices.Clone(s.Args[1:]),
		State: ContainerState{
			Status:     r.State.Status,
			Running:    r.State.Status == "running",
			Pid:        r.State.Pid,
			ExitCode:   r.State.ExitCode,
			Error:      r.State.Error,
			StartedAt:  r.State.StartedAt,
			FinishedAt: r.State.FinishedAt,
		},
		ResolvConfPath: r.ResolvConfPath,
		HostsPath:      r.HostsPath,
		LogPath:        r.LogPath,
		Name:           "/" + r.Name,
		HostConfig: HostConfig{
			NetworkMode:     networkMode(s),
			PortBindings:    PortMap{},
			AutoRemove:      s.AutoRemove,
			PublishAllPorts: s.PublishAll,
			UsernetBypass:   s.Bypass,
			DNS:             []string{},
			DNSOptions:      []string{},
			DNSSearch:       []string{},
		},
		Config: ContainerConfig{
			Hostname:     s.Hostname,
			AttachStdin:  !s.Detach && s.Interactive,
			AttachStdout: !s.Detach,
			AttachStderr: !s.Detach,
			Tty:          s.TTY,
			OpenStdin:    s.Interactive,
			StdinOnce:    !s.Detach && s.Interactive,
			Env:          slices.Clone(s.Env),
			Cmd:          slices.Clone(s.Args),
			Labels:       map[string]string{},
		},
		NetworkSettings: NetworkSettings{
			SandboxID: r.ID,
			Ports:     PortMap{},
			Networks:  map[string]*EndpointSettings{},
		},
	}
	if j.Args == nil {
		j.Args = []string{}
	}
	if j.Config.Env == nil {
		j.Config.Env = []string{}
	}
	for _, b := range s.Ports {
		k := portKey(b.ContainerPort, b.Proto)
		hb := HostBinding{}
		if b.HostIP.IsValid() {
			hb.HostIP = b.HostIP.String()
		}
		if b.HostPort != 0 {
			hb.HostPort = strconv.Itoa(int(b.HostPort))
		}
		j.HostConfig.PortBindings[k] = append(j.HostConfig.PortBindings[k], hb)
	}
	for _, a := range s.DNS {
		j.HostConfig.DNS = append(j.HostConfig.DNS, a.String())
	}
	j.HostConfig.DNSSearch = append(j.HostConfig.DNSSearch, s.DNSSearch...)
	for _, h := range s.ExtraHosts {
		j.HostConfig.ExtraHosts = append(j.HostConfig.ExtraHosts, h.Host+":"+h.IP.String())
	}
	if len(s.Exposed) > 0 {
		j.Config.ExposedPorts = make(map[string]struct{})
		for _, pp := range s.Exposed {
			j.Config.ExposedPorts[pp.String()] = struct{}{}
		}
	}

	ns := &j.NetworkSettings
	es := &EndpointSettings{}
	if n != nil {
		es.NetworkID = n.rec.ID
		j.NetworkSettings.Networks[n.rec.Name] = es
	}
	ep := r.Endpoint
	if ep == nil {
		// Not running: Docker shows the network with no endpoint, and no ports.
		return j
	}
	es.EndpointID = ep.ID
	if r.State.Pid > 0 && s.Network != modeHost {
		ns.SandboxKey = fmt.Sprintf("/proc/%d/ns/net", r.State.Pid)
	}
	if s.Network == modeBridge {
		// Exposed but unpublished: Docker prints "80/tcp": null.
		for _, pp := range s.Exposed {
			ns.Ports[pp.String()] = nil
		}
	}
	for _, m := range ep.Ports {
		k := portKey(m.ContainerPort, m.Proto)
		ns.Ports[k] = append(ns.Ports[k], HostBinding{HostIP: m.HostIP.String(), HostPort: strconv.Itoa(int(m.HostPort))})
	}
	if ep.Addr.IsValid() && n != nil {
		bits := n.rec.Subnet.Bits()
		es.Gateway = n.rec.Gateway.String()
		es.IPAddress = ep.Addr.String()
		es.IPPrefixLen = bits
		es.MacAddress = ep.MAC
		// Docker fills the deprecated top-level fields for the default
		// bridge only; scripts read a user-defined network's endpoint
		// from Networks[name].
		if isPredefined(n.rec) {
			ns.EndpointID = ep.ID
			ns.Gateway = es.Gateway
			ns.IPAddress = es.IPAddress
			ns.IPPrefixLen = bits
			ns.MacAddress = ep.MAC
		}
	}
	return j
}

func (e *Engine) port(nameOrID string) ([]PortMapping, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.lookupLocked(nameOrID)
	if err != nil {
		return nil, err
	}
	if c.rec.Endpoint == nil {
		return nil, nil
	}
	out := slices.Clone(c.rec.Endpoint.Ports)
	slices.SortFunc(out, comparePortMapping)
	return out, nil
}

func (e *Engine) networkList() []NetworkResource {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]NetworkResource, 0, len(e.networks))
	for _, n := range e.networks {
		out = append(out, e.networkJSONLocked(n))
	}
	slices.SortFunc(out, func(a, b NetworkResource) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func (e *Engine) networkInspect(nameOrID string) (NetworkResource, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, err := e.resolveNetworkLocked(nameOrID)
	if err != nil {
		return NetworkResource{}, err
	}
	return e.networkJSONLocked(n), nil
}

// networkJSONLocked builds the `docker network inspect` view of n, with
// its running sandboxes. Callers hold e.mu.
func (e *Engine) networkJSONLocked(n *network) NetworkResource {
	r := n.rec
	j := NetworkResource{
		Name:       r.Name,
		ID:         r.ID,
		Created:    r.Created,
		Scope:      "local",
		Driver:     r.Driver,
		IPAM:       IPAM{Driver: "default", Config: []IPAMConfig{}},
		Containers: map[string]NetworkContainer{},
		Options:    map[string]string{},
		Labels:     map[string]string{},
	}
	if r.Subnet.IsValid() {
		c := IPAMConfig{Subnet: r.Subnet.String(), Gateway: r.Gateway.String()}
		if r.IPRange.IsValid() {
			c.IPRange = r.IPRange.String()
		}
		j.IPAM.Config = append(j.IPAM.Config, c)
	}
	j.Internal = r.Internal
	maps.Copy(j.Options, r.Options)
	maps.Copy(j.Labels, r.Labels)
	for _, c := range e.containers {
		ep := c.rec.Endpoint
		if c.net != n || ep == nil {
			continue
		}
		nc := NetworkContainer{Name: c.rec.Name, EndpointID: ep.ID, MacAddress: ep.MAC}
		if ep.Addr.IsValid() {
			nc.IPv4Address = fmt.Sprintf("%v/%d", ep.Addr, r.Subnet.Bits())
		}
		j.Containers[c.rec.ID] = nc
	}
	return j
}
