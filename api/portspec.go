package api

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/usernet/usernet/engine"
)

// PortBinding is one published port as the engine takes it. It is an alias
// so that the CLI can hand ParsePortSpec's result to RunRequest unchanged.
type PortBinding = engine.PortBinding

// ParsePortSpec parses one -p option in Docker's grammar,
//
//	[hostIP:][hostPort[-end]:]containerPort[-end][/tcp|udp]
//
// and returns one binding per container port, ranges expanded in order. An
// IPv6 host address is written in brackets ("[::1]:8080:80"). A missing or
// empty host port leaves HostPort 0, which asks the engine for a free port;
// a missing host address leaves HostIP invalid, meaning all addresses. When
// both ports are ranges they must be of equal length; a single host port
// cannot serve a range of container ports. Proto is always set ("tcp" when
// the spec names none).
//
// Errors read `invalid port spec "SPEC": REASON`.
func ParsePortSpec(s string) ([]PortBinding, error) {
	b, err := parsePortSpec(s)
	if err != nil {
		return nil, fmt.Errorf("invalid port spec %q: %w", s, err)
	}
	return b, nil
}

// ParseExposeSpec parses one --expose option, PORT[-END][/tcp|udp], into
// the container ports it names. Errors read `invalid port spec "SPEC": REASON`.
func ParseExposeSpec(s string) ([]engine.PortProto, error) {
	if strings.Contains(s, ":") {
		return nil, fmt.Errorf("invalid port spec %q: --expose takes PORT[-END][/PROTO] without a host part", s)
	}
	bs, err := ParsePortSpec(s)
	if err != nil {
		return nil, err
	}
	ports := make([]engine.PortProto, len(bs))
	for i, b := range bs {
		ports[i] = engine.PortProto{Port: b.ContainerPort, Proto: b.Proto}
	}
	return ports, nil
}

func parsePortSpec(s string) ([]PortBinding, error) {
	rest, proto := s, "tcp"
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		rest, proto = s[:i], s[i+1:]
		if proto != "tcp" && proto != "udp" {
			return nil, fmt.Errorf("protocol %q: use tcp or udp", proto)
		}
	}
	hostIP, hostPorts, containerPorts, err := splitPortSpec(rest)
	if err != nil {
		return nil, err
	}
	cLo, cHi, err := parsePortRange(containerPorts)
	if err != nil {
		return nil, fmt.Errorf("container port: %w", err)
	}
	var hLo, hHi uint16
	if hostPorts != "" {
		if hLo, hHi, err = parsePortRange(hostPorts); err != nil {
			return nil, fmt.Errorf("host port: %w", err)
		}
		if hHi-hLo != cHi-cLo {
			return nil, fmt.Errorf("host port range %s and container port range %s differ in length", hostPorts, containerPorts)
		}
	}
	n := int(cHi-cLo) + 1
	bs := make([]PortBinding, 0, n)
	for i := range n {
		b := PortBinding{HostIP: hostIP, ContainerPort: cLo + uint16(i), Proto: proto}
		if hostPorts != "" {
			b.HostPort = hLo + uint16(i)
		}
		bs = append(bs, b)
	}
	return bs, nil
}

// splitPortSpec splits "[hostIP:][hostPort:]containerPort" (protocol
// already removed) and parses the host address.
func splitPortSpec(s string) (hostIP netip.Addr, hostPorts, containerPorts string, err error) {
	var ip string
	bracketed := strings.HasPrefix(s, "[")
	if bracketed {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, "", "", errors.New("missing ']' after the IPv6 host address")
		}
		ip, s = s[1:end], s[end+1:]
		var ok bool
		if s, ok = strings.CutPrefix(s, ":"); !ok {
			return netip.Addr{}, "", "", errors.New("want ':' after the bracketed host address")
		}
		parts := strings.Split(s, ":")
		if len(parts) != 2 {
			return netip.Addr{}, "", "", errors.New("want [hostIP]:[hostPort]:containerPort")
		}
		hostPorts, containerPorts = parts[0], parts[1]
	} else {
		parts := strings.Split(s, ":")
		switch len(parts) {
		case 1:
			containerPorts = parts[0]
		case 2:
			hostPorts, containerPorts = parts[0], parts[1]
			if hostPorts == "" {
				return netip.Addr{}, "", "", errors.New("empty host port: drop the ':' or name a port")
			}
		case 3:
			ip, hostPorts, containerPorts = parts[0], parts[1], parts[2]
			if ip == "" {
				return netip.Addr{}, "", "", errors.New("empty host address: drop the ':' or name an address")
			}
		default:
			return netip.Addr{}, "", "", errors.New("too many ':'; write an IPv6 host address in brackets, e.g. [::1]:8080:80")
		}
	}
	if containerPorts == "" {
		return netip.Addr{}, "", "", errors.New("no container port")
	}
	if ip == "" && !bracketed {
		return netip.Addr{}, hostPorts, containerPorts, nil
	}
	addr, perr := netip.ParseAddr(ip)
	switch {
	case perr != nil:
		return netip.Addr{}, "", "", fmt.Errorf("host address %q is not an IP address", ip)
	case addr.Zone() != "":
		return netip.Addr{}, "", "", fmt.Errorf("host address %q: zones are not supported", ip)
	case bracketed && addr.Is4():
		return netip.Addr{}, "", "", fmt.Errorf("host address %q: brackets are for IPv6 addresses only", ip)
	}
	return addr, hostPorts, containerPorts, nil
}

// parsePortRange parses "80" or "8000-8010" (1..65535, lo <= hi).
func parsePortRange(s string) (lo, hi uint16, err error) {
	loS, hiS, isRange := strings.Cut(s, "-")
	if lo, err = parsePort(loS); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return lo, lo, nil
	}
	if hi, err = parsePort(hiS); err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("range %s ends before it starts", s)
	}
	return lo, hi, nil
}

func parsePort(s string) (uint16, error) {
	// ParseUint accepts only digits here (no sign, no base prefix, no '_'
	// with base 10), which is the grammar we want.
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(n), nil
}

// FormatPortSpec writes b in the -p grammar ParsePortSpec reads, so that
// ParsePortSpec(FormatPortSpec(b)) returns exactly b for every binding
// ParsePortSpec produces. An empty Proto is written as "tcp".
func FormatPortSpec(b PortBinding) string {
	proto := b.Proto
	if proto == "" {
		proto = "tcp"
	}
	container := strconv.Itoa(int(b.ContainerPort)) + "/" + proto
	host := ""
	if b.HostPort != 0 {
		host = strconv.Itoa(int(b.HostPort))
	}
	switch {
	case b.HostIP.Is6():
		return "[" + b.HostIP.String() + "]:" + host + ":" + container
	case b.HostIP.IsValid():
		return b.HostIP.String() + ":" + host + ":" + container
	case host != "":
		return host + ":" + container
	}
	return container
}
