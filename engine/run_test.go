package engine

import (
	"net/netip"
	"testing"
)

func TestDescribeBinding(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		b    PortBinding
		want string
	}{
		{PortBinding{ContainerPort: 80}, "80"},
		{PortBinding{HostPort: 8080, ContainerPort: 80}, "8080:80"},
		{PortBinding{HostIP: lo, HostPort: 8080, ContainerPort: 80, Proto: "udp"}, "127.0.0.1:8080:80/udp"},
		{PortBinding{HostIP: lo, ContainerPort: 80}, "127.0.0.1::80"},
	}
	for _, tc := range tests {
		if got := describeBinding(tc.b); got != tc.want {
			t.Errorf("describeBinding(%+v) = %q, want %q", tc.b, got, tc.want)
		}
	}
}
