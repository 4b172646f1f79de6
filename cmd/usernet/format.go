package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/usernet/usernet/engine"
)

// Output formats follow docker's, so that eyes and scripts used to docker
// read them unchanged.

// newTable returns the tabwriter docker's tables use: columns at least 10
// wide, 3 spaces apart.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 10, 1, 3, ' ', 0)
}

// commandWidth is how much of the command ps shows, as docker's 20.
const commandWidth = 20

// writePs writes the `usernet ps` table. There are no images, so the
// IMAGE column is left out.
func writePs(w io.Writer, rows []engine.ContainerSummary) error {
	t := newTable(w)
	fmt.Fprintln(t, "CONTAINER ID\tCOMMAND\tCREATED\tSTATUS\tPORTS\tNAMES")
	for _, r := range rows {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n",
			shortID(r.ID), `"`+ellipsis(r.Command, commandWidth)+`"`, r.RunningFor, r.Status, r.Ports, strings.Join(r.Names, ","))
	}
	return t.Flush()
}

// writeIDs writes one short ID per line (ps -q).
func writeIDs(w io.Writer, rows []engine.ContainerSummary) error {
	for _, r := range rows {
		if _, err := fmt.Fprintln(w, shortID(r.ID)); err != nil {
			return err
		}
	}
	return nil
}

// ellipsis shortens s to at most n runes, marking the cut with "…".
func ellipsis(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// writeNetworks writes the `usernet network ls` table.
func writeNetworks(w io.Writer, nets []engine.NetworkResource) error {
	t := newTable(w)
	fmt.Fprintln(t, "NETWORK ID\tNAME\tDRIVER\tSCOPE")
	for _, n := range nets {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", shortID(n.ID), n.Name, n.Driver, n.Scope)
	}
	return t.Flush()
}

// hostAddr formats a published port's host side as docker port does
// ("0.0.0.0:8080", "[::1]:8080"); no address means all IPv4 addresses.
func hostAddr(m engine.PortMapping) string {
	ip := m.HostIP
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	return netip.AddrPortFrom(ip, m.HostPort).String()
}

// portKey formats a container port as "80/tcp".
func portKey(port uint16, proto string) string {
	if proto == "" {
		proto = "tcp"
	}
	return fmt.Sprintf("%d/%s", port, proto)
}

// writePorts writes `usernet port` lines: every mapping as
// "80/tcp -> 0.0.0.0:8080", or with a filter only the host addresses of
// the matching container port.
func writePorts(w io.Writer, mappings []engine.PortMapping, filter *engine.PortProto) error {
	for _, m := range mappings {
		var line string
		switch {
		case filter == nil:
			line = portKey(m.ContainerPort, m.Proto) + " -> " + hostAddr(m)
		case m.ContainerPort == filter.Port && m.Proto == filter.Proto:
			line = hostAddr(m)
		default:
			continue
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// writeJSON writes v as docker inspect does: indented by four spaces,
// with a final newline, and without escaping <, > and & in strings.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
