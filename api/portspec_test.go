package api

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/usernet/usernet/engine"
)

func TestParsePortSpec(t *testing.T) {
	v4 := netip.MustParseAddr("127.0.0.1")
	v6 := netip.MustParseAddr("::1")
	tests := []struct {
		name    string
		spec    string
		want    []PortBinding
		wantErr string // substring of the error; "" means success
	}{
		{name: "container port only", spec: "80",
			want: []PortBinding{{ContainerPort: 80, Proto: "tcp"}}},
		{name: "host and container", spec: "8080:80",
			want: []PortBinding{{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}}},
		{name: "udp", spec: "53:53/udp",
			want: []PortBinding{{HostPort: 53, ContainerPort: 53, Proto: "udp"}}},
		{name: "ipv4 host address", spec: "127.0.0.1:8080:80",
			want: []PortBinding{{HostIP: v4, HostPort: 8080, ContainerPort: 80, Proto: "tcp"}}},
		{name: "ipv4 host address free port", spec: "127.0.0.1::80/udp",
			want: []PortBinding{{HostIP: v4, ContainerPort: 80, Proto: "udp"}}},
		{name: "ipv6 host address", spec: "[::1]:8080:80",
			want: []PortBinding{{HostIP: v6, HostPort: 8080, ContainerPort: 80, Proto: "tcp"}}},
		{name: "ipv6 host address free port", spec: "[::1]::80",
			want: []PortBinding{{HostIP: v6, ContainerPort: 80, Proto: "tcp"}}},
		{name: "all addresses", spec: "0.0.0.0:1:2",
			want: []PortBinding{{HostIP: netip.IPv4Unspecified(), HostPort: 1, ContainerPort: 2, Proto: "tcp"}}},
		{name: "ranges", spec: "8000-8002:80-82",
			want: []PortBinding{
				{HostPort: 8000, ContainerPort: 80, Proto: "tcp"},
				{HostPort: 8001, ContainerPort: 81, Proto: "tcp"},
				{HostPort: 8002, ContainerPort: 82, Proto: "tcp"},
			}},
		{name: "container range free host ports", spec: "80-81/udp",
			want: []PortBinding{{ContainerPort: 80, Proto: "udp"}, {ContainerPort: 81, Proto: "udp"}}},
		{name: "highest port", spec: "65535:65535",
			want: []PortBinding{{HostPort: 65535, ContainerPort: 65535, Proto: "tcp"}}},

		{name: "not a number", spec: "abc", wantErr: `invalid port spec "abc": container port: "abc" is not a port number`},
		{name: "empty", spec: "", wantErr: "no container port"},
		{name: "port zero", spec: "0", wantErr: `"0" is not a port number`},
		{name: "port too big", spec: "65536", wantErr: `"65536" is not a port number`},
		{name: "signed port", spec: "+80", wantErr: "is not a port number"},
		{name: "bad protocol", spec: "80/sctp", wantErr: `protocol "sctp": use tcp or udp`},
		{name: "empty protocol", spec: "80/", wantErr: `protocol ""`},
		{name: "uneven ranges", spec: "8000-8001:80-82", wantErr: "differ in length"},
		{name: "single host port for range", spec: "8000:80-81", wantErr: "differ in length"},
		{name: "host range for single port", spec: "8000-8001:80", wantErr: "differ in length"},
		{name: "backwards range", spec: "90-80", wantErr: "ends before it starts"},
		{name: "half range", spec: "80-", wantErr: "is not a port number"},
		{name: "empty host port", spec: ":80", wantErr: "empty host port"},
		{name: "empty host address", spec: "::80", wantErr: "empty host address"},
		{name: "bad host address", spec: "example.com:80:80", wantErr: `host address "example.com" is not an IP address`},
		{name: "unbracketed ipv6", spec: "::1:80:80", wantErr: "brackets"},
		{name: "bracketed ipv4", spec: "[127.0.0.1]:80:80", wantErr: "IPv6 addresses only"},
		{name: "missing bracket", spec: "[::1:80:80", wantErr: "missing ']'"},
		{name: "no colon after bracket", spec: "[::1]80:80", wantErr: "want ':'"},
		{name: "bracket without host port", spec: "[::1]:80", wantErr: "want [hostIP]:[hostPort]:containerPort"},
		{name: "zone", spec: "[fe80::1%eth0]:80:80", wantErr: "zones are not supported"},
		{name: "no container port", spec: "8080:", wantErr: "no container port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePortSpec(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParsePortSpec(%q) = %v, %v; want error containing %q", tc.spec, got, err, tc.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "invalid port spec ") {
					t.Errorf("ParsePortSpec(%q) error %q lacks the `invalid port spec` prefix", tc.spec, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePortSpec(%q): %v", tc.spec, err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("ParsePortSpec(%q) mismatch (-want +got):\n%s", tc.spec, diff)
			}
		})
	}
}

func TestFormatPortSpec(t *testing.T) {
	tests := []struct {
		name string
		b    PortBinding
		want string
	}{
		{name: "container only", b: PortBinding{ContainerPort: 80}, want: "80/tcp"},
		{name: "host port", b: PortBinding{HostPort: 8080, ContainerPort: 80, Proto: "udp"}, want: "8080:80/udp"},
		{name: "ipv4", b: PortBinding{HostIP: netip.MustParseAddr("10.0.0.1"), ContainerPort: 80, Proto: "tcp"}, want: "10.0.0.1::80/tcp"},
		{name: "ipv6", b: PortBinding{HostIP: netip.MustParseAddr("::"), HostPort: 1, ContainerPort: 2, Proto: "tcp"}, want: "[::]:1:2/tcp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := FormatPortSpec(tc.b); got != tc.want {
				t.Errorf("FormatPortSpec(%+v) = %q, want %q", tc.b, got, tc.want)
			}
		})
	}
}

func TestParseExposeSpec(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		want    []engine.PortProto
		wantErr string
	}{
		{name: "single", spec: "80", want: []engine.PortProto{{Port: 80, Proto: "tcp"}}},
		{name: "range udp", spec: "53-54/udp", want: []engine.PortProto{{Port: 53, Proto: "udp"}, {Port: 54, Proto: "udp"}}},
		{name: "host part", spec: "8080:80", wantErr: "without a host part"},
		{name: "garbage", spec: "x", wantErr: `invalid port spec "x"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseExposeSpec(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseExposeSpec(%q) = %v, %v; want error containing %q", tc.spec, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseExposeSpec(%q): %v", tc.spec, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseExposeSpec(%q) mismatch (-want +got):\n%s", tc.spec, diff)
			}
		})
	}
}

// FuzzParsePortSpec checks that the parser never panics and that every
// binding it accepts survives a round trip through FormatPortSpec.
func FuzzParsePortSpec(f *testing.F) {
	for _, s := range []string{"80", "8080:80", "127.0.0.1::53/udp", "[::1]:1-3:4-6/tcp", "0.0.0.0:65535:1", "[::ffff:1.2.3.4]:1:1", "1-65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		bs, err := ParsePortSpec(s)
		if err != nil {
			return
		}
		if len(bs) == 0 {
			t.Fatalf("ParsePortSpec(%q) accepted but returned no bindings", s)
		}
		for _, b := range bs {
			if b.ContainerPort == 0 || (b.Proto != "tcp" && b.Proto != "udp") {
				t.Fatalf("ParsePortSpec(%q) returned invalid binding %+v", s, b)
			}
			again, err := ParsePortSpec(FormatPortSpec(b))
			if err != nil {
				t.Fatalf("ParsePortSpec(FormatPortSpec(%+v) = %q): %v", b, FormatPortSpec(b), err)
			}
			if len(again) != 1 || again[0] != b {
				t.Fatalf("round trip of %+v via %q gave %+v", b, FormatPortSpec(b), again)
			}
		}
	})
}
