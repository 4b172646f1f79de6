package engine

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestIPAMAllocate(t *testing.T) {
	tests := []struct {
		name    string
		subnet  string
		gateway string
		n       int // allocations to make
		want    []netip.Addr
	}{
		{"default bridge starts at .2", "172.17.0.0/16", "172.17.0.1", 3, addrs("172.17.0.2", "172.17.0.3", "172.17.0.4")},
		{"gateway in the middle is skipped", "10.0.0.0/29", "10.0.0.3", 5, addrs("10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6")},
		{"crosses an octet", "10.1.0.0/23", "10.1.0.1", 256, nil},
		{"unmasked subnet is masked", "192.168.5.77/24", "192.168.5.1", 1, addrs("192.168.5.2")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := newIPAM(netip.MustParsePrefix(tc.subnet), netip.MustParseAddr(tc.gateway), netip.Prefix{})
			if err != nil {
				t.Fatalf("newIPAM: %v", err)
			}
			var got []netip.Addr
			for i := range tc.n {
				a, err := m.Allocate("owner")
				if err != nil {
					t.Fatalf("Allocate #%d: %v", i, err)
				}
				got = append(got, a)
			}
			if tc.want == nil {
				// Only check the last one: .2 .. .255 then 10.1.1.0 (256th).
				if last := got[len(got)-1]; last != netip.MustParseAddr("10.1.1.1") {
					t.Errorf("256th allocation = %v, want 10.1.1.1", last)
				}
				return
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("allocations (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIPAMReleaseReuse(t *testing.T) {
	m, err := newIPAM(netip.MustParsePrefix("172.17.0.0/16"), netip.MustParseAddr("172.17.0.1"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := m.Allocate("a")
	b, _ := m.Allocate("b")
	c, _ := m.Allocate("c")
	m.Release(b)
	m.Release(b) // releasing twice is harmless
	if got, _ := m.Allocate("d"); got != b {
		t.Errorf("after releasing %v, Allocate = %v, want the freed address", b, got)
	}
	m.Release(a)
	if got, _ := m.Allocate("e"); got != a {
		t.Errorf("after releasing %v, Allocate = %v, want the lowest free address", a, got)
	}
	if got, _ := m.Allocate("f"); got != c.Next() {
		t.Errorf("next Allocate = %v, want %v", got, c.Next())
	}
	if owner, ok := m.Owner(b); !ok || owner != "d" {
		t.Errorf("Owner(%v) = %q, %v; want d, true", b, owner, ok)
	}
	if m.InUse() != 4 {
		t.Errorf("InUse = %d, want 4", m.InUse())
	}
}

func TestIPAMExhaustion(t *testing.T) {
	// A /29 has 8 addresses: network .0, broadcast .7, gateway .1, so 5 to hand out.
	m, err := newIPAM(netip.MustParsePrefix("10.9.0.0/29"), netip.MustParseAddr("10.9.0.1"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[netip.Addr]bool)
	for range 5 {
		a, err := m.Allocate("x")
		if err != nil {
			t.Fatalf("Allocate: %v", err)
		}
		seen[a] = true
	}
	for _, never := range addrs("10.9.0.0", "10.9.0.1", "10.9.0.7") {
		if seen[never] {
			t.Errorf("handed out %v (network, gateway or broadcast)", never)
		}
	}
	_, err = m.Allocate("y")
	if !errors.Is(err, errExhausted) || !errors.Is(err, ErrConflict) {
		t.Fatalf("Allocate on a full subnet: err = %v, want errExhausted and ErrConflict", err)
	}
	m.Release(netip.MustParseAddr("10.9.0.4"))
	if a, err := m.Allocate("z"); err != nil || a != netip.MustParseAddr("10.9.0.4") {
		t.Errorf("Allocate after a release = %v, %v; want 10.9.0.4", a, err)
	}
}

func TestIPAMReserve(t *testing.T) {
	tests := []struct {
		name    string
		addr    string
		owner   string
		wantErr error
	}{
		{"free host address", "172.17.0.9", "a", nil},
		{"same owner again", "172.17.0.2", "first", nil},
		{"taken by another owner", "172.17.0.2", "other", ErrConflict},
		{"gateway", "172.17.0.1", "a", ErrConflict},
		{"network address", "172.17.0.0", "a", ErrInvalid},
		{"broadcast", "172.17.255.255", "a", ErrInvalid},
		{"outside subnet", "10.0.0.2", "a", ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := newIPAM(netip.MustParsePrefix("172.17.0.0/16"), netip.MustParseAddr("172.17.0.1"), netip.Prefix{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Allocate("first"); err != nil {
				t.Fatal(err)
			}
			err = m.Reserve(netip.MustParseAddr(tc.addr), tc.owner)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("Reserve(%s, %s) = %v, want %v", tc.addr, tc.owner, err, tc.wantErr)
			}
		})
	}
}

func TestNewIPAMErrors(t *testing.T) {
	tests := []struct {
		name, subnet, gateway string
	}{
		{"IPv6 subnet", "fd00::/64", "fd00::1"},
		{"too small", "10.0.0.0/31", "10.0.0.1"},
		{"gateway outside", "10.0.0.0/24", "10.0.1.1"},
		{"gateway is network address", "10.0.0.0/24", "10.0.0.0"},
		{"gateway is broadcast", "10.0.0.0/24", "10.0.0.255"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newIPAM(netip.MustParsePrefix(tc.subnet), netip.MustParseAddr(tc.gateway), netip.Prefix{})
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("newIPAM(%s, %s) = %v, want ErrInvalid", tc.subnet, tc.gateway, err)
			}
		})
	}
}

// TestIPAMRange: with an ip range only its addresses are handed out,
// lowest first, skipping the gateway and the subnet's own network and
// broadcast addresses.
func TestIPAMRange(t *testing.T) {
	tests := []struct {
		name, subnet, gateway, ipRange string
		want                           []string // every address handed out, in order
		wantErr                        bool
	}{
		{name: "middle of the subnet", subnet: "10.0.0.0/16", gateway: "10.0.0.1", ipRange: "10.0.5.0/30",
			want: []string{"10.0.5.0", "10.0.5.1", "10.0.5.2", "10.0.5.3"}},
		{name: "range at the subnet's start", subnet: "10.0.0.0/24", gateway: "10.0.0.1", ipRange: "10.0.0.0/29",
			want: []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"}},
		{name: "range at the subnet's end", subnet: "10.0.0.0/24", gateway: "10.0.0.1", ipRange: "10.0.0.252/30",
			want: []string{"10.0.0.252", "10.0.0.253", "10.0.0.254"}},
		{name: "gateway inside the range", subnet: "10.0.0.0/24", gateway: "10.0.0.9", ipRange: "10.0.0.8/30",
			want: []string{"10.0.0.8", "10.0.0.10", "10.0.0.11"}},
		{name: "whole subnet", subnet: "10.0.0.0/29", gateway: "10.0.0.1", ipRange: "10.0.0.0/29",
			want: []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{name: "only the gateway", subnet: "10.0.0.0/24", gateway: "10.0.0.9", ipRange: "10.0.0.9/32", wantErr: true},
		{name: "outside", subnet: "10.0.0.0/24", gateway: "10.0.0.1", ipRange: "10.0.1.0/28", wantErr: true},
		{name: "wider than the subnet", subnet: "10.0.0.0/24", gateway: "10.0.0.1", ipRange: "10.0.0.0/23", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := newIPAM(netip.MustParsePrefix(tc.subnet), netip.MustParseAddr(tc.gateway), netip.MustParsePrefix(tc.ipRange))
			if tc.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("newIPAM = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for {
				a, err := m.Allocate("x")
				if err != nil {
					break
				}
				got = append(got, a.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("addresses handed out (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLastAddr(t *testing.T) {
	tests := map[string]string{
		"172.17.0.0/16": "172.17.255.255",
		"10.0.0.0/29":   "10.0.0.7",
		"10.0.0.0/8":    "10.255.255.255",
		"10.1.2.0/23":   "10.1.3.255",
		"10.1.2.3/32":   "10.1.2.3",
	}
	for p, want := range tests {
		if got := lastAddr(netip.MustParsePrefix(p)); got != netip.MustParseAddr(want) {
			t.Errorf("lastAddr(%s) = %v, want %s", p, got, want)
		}
	}
}
