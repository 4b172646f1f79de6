package main

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/usernet/usernet/engine"
)

func TestWritePs(t *testing.T) {
	rows := []engine.ContainerSummary{
		{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Names: []string{"web"},
			Command: "python3 -m http.server 80", RunningFor: "3 seconds ago", Status: "Up 3 seconds",
			Ports: "0.0.0.0:8080->80/tcp"},
		{ID: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Names: []string{"old"},
			Command: "true", RunningFor: "2 hours ago", Status: "Exited (0) 2 hours ago"},
	}
	var b bytes.Buffer
	if err := writePs(&b, rows); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"CONTAINER ID   COMMAND                  CREATED         STATUS                   PORTS                  NAMES\n" +
		"aaaaaaaaaaaa   \"python3 -m http.ser…\"   3 seconds ago   Up 3 seconds             0.0.0.0:8080->80/tcp   web\n" +
		"bbbbbbbbbbbb   \"true\"                   2 hours ago     Exited (0) 2 hours ago                          old\n"
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("ps table mismatch (-want +got):\n%s", diff)
	}
}

func TestWritePorts(t *testing.T) {
	mappings := []engine.PortMapping{
		{ContainerPort: 80, Proto: "tcp", HostIP: netip.IPv4Unspecified(), HostPort: 5000},
		{ContainerPort: 80, Proto: "tcp", HostIP: netip.MustParseAddr("::1"), HostPort: 5001},
		{ContainerPort: 53, Proto: "udp", HostPort: 5353}, // no address: all IPv4
	}
	tests := []struct {
		name   string
		filter *engine.PortProto
		want   string
	}{
		{name: "all", want: "80/tcp -> 0.0.0.0:5000\n80/tcp -> [::1]:5001\n53/udp -> 0.0.0.0:5353\n"},
		{name: "one port", filter: &engine.PortProto{Port: 80, Proto: "tcp"}, want: "0.0.0.0:5000\n[::1]:5001\n"},
		{name: "protocol matters", filter: &engine.PortProto{Port: 53, Proto: "tcp"}, want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writePorts(&b, mappings, tc.filter); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, b.String()); diff != "" {
				t.Errorf("port lines mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEllipsis(t *testing.T) {
	tests := []struct {
		name string
		in   string
		n    int
		want string
	}{
		{name: "short", in: "sleep 1", n: 20, want: "sleep 1"},
		{name: "exact", in: "12345", n: 5, want: "12345"},
		{name: "cut", in: "123456", n: 5, want: "1234…"},
		{name: "runes", in: "ééééééé", n: 3, want: "éé…"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ellipsis(tc.in, tc.n); got != tc.want {
				t.Errorf("ellipsis(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
			}
		})
	}
}

func TestParseEnv(t *testing.T) {
	lookup := func(k string) (string, bool) {
		if k == "HOME" {
			return "/home/u", true
		}
		return "", false
	}
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr bool
	}{
		{name: "pairs", in: []string{"A=1", "B=", "C=x=y"}, want: []string{"A=1", "B=", "C=x=y"}},
		{name: "copied from here", in: []string{"HOME", "UNSET"}, want: []string{"HOME=/home/u"}},
		{name: "empty name", in: []string{"=v"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseEnv(tc.in, lookup)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseEnv(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseEnv(%q) mismatch (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

func TestParseHostEntry(t *testing.T) {
	tests := []struct {
		in      string
		want    engine.HostEntry
		wantErr bool
	}{
		{in: "db:10.0.0.2", want: engine.HostEntry{Host: "db", IP: netip.MustParseAddr("10.0.0.2")}},
		{in: "db=10.0.0.2", want: engine.HostEntry{Host: "db", IP: netip.MustParseAddr("10.0.0.2")}},
		{in: "v6:::1", want: engine.HostEntry{Host: "v6", IP: netip.MustParseAddr("::1")}},
		{in: "v6:[fd00::1]", want: engine.HostEntry{Host: "v6", IP: netip.MustParseAddr("fd00::1")}},
		{in: "db", wantErr: true},
		{in: ":10.0.0.1", wantErr: true},
		{in: "db:host-gateway", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseHostEntry(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseHostEntry(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("parseHostEntry(%q) mismatch (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}
