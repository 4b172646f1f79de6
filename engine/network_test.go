package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// netSummary is what the tests compare of Networks(): enough to see that
// nothing was added, removed or changed.
type netSummary struct {
	Name, ID, Subnet, Gateway string
	Internal                  bool
	Options                   map[string]string
}

func (env *testEnv) netSummaries() []netSummary {
	env.t.Helper()
	var out []netSummary
	for _, n := range env.e.Networks() {
		s := netSummary{Name: n.Name, ID: n.ID, Internal: n.Internal, Options: n.Options}
		if len(n.IPAM.Config) > 0 {
			s.Subnet, s.Gateway = n.IPAM.Config[0].Subnet, n.IPAM.Config[0].Gateway
		}
		out = append(out, s)
	}
	return out
}

// create makes a network and fails the test on error.
func (env *testEnv) create(cfg NetworkCreateConfig) NetworkResource {
	env.t.Helper()
	id, err := env.e.NetworkCreate(context.Background(), cfg)
	if err != nil {
		env.t.Fatalf("NetworkCreate(%+v): %v", cfg, err)
	}
	if !isHex64(id) {
		env.t.Fatalf("NetworkCreate returned ID %q, want 64 hex digits", id)
	}
	n, err := env.e.NetworkInspect(id)
	if err != nil {
		env.t.Fatalf("NetworkInspect(%s) after create: %v", id, err)
	}
	return n
}

func subnetOf(n NetworkResource) string {
	if len(n.IPAM.Config) == 0 {
		return ""
	}
	return n.IPAM.Config[0].Subnet + " gw " + n.IPAM.Config[0].Gateway
}

// TestNetworkPools: without --subnet each network takes the next of
// Docker's default pools that overlaps nothing, skipping subnets given
// explicitly; when all are taken the error says so and how to fix it.
func TestNetworkPools(t *testing.T) {
	env := newTestEnv(t)
	var got []string
	for i := range 3 {
		got = append(got, subnetOf(env.create(NetworkCreateConfig{Name: fmt.Sprintf("n%d", i)})))
	}
	// An explicit subnet inside the next pool makes the pool unavailable.
	env.create(NetworkCreateConfig{Name: "explicit", Subnet: netip.MustParsePrefix("172.21.5.0/24")})
	got = append(got, subnetOf(env.create(NetworkCreateConfig{Name: "n3"})))
	want := []string{"172.18.0.0/16 gw 172.18.0.1", "172.19.0.0/16 gw 172.19.0.1", "172.20.0.0/16 gw 172.20.0.1", "172.22.0.0/16 gw 172.22.0.1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pools picked (-want +got):\n%s", diff)
	}
	// 172.23-31 are the /16s left; then 192.168.0.0/20 steps.
	for b := 23; b <= 31; b++ {
		if n := env.create(NetworkCreateConfig{Name: fmt.Sprintf("b%d", b)}); subnetOf(n) != fmt.Sprintf("172.%d.0.0/16 gw 172.%d.0.1", b, b) {
			t.Fatalf("network b%d got %s", b, subnetOf(n))
		}
	}
	if n := env.create(NetworkCreateConfig{Name: "c0"}); subnetOf(n) != "192.168.0.0/20 gw 192.168.0.1" {
		t.Errorf("first pool after 172.31.0.0/16: %s, want 192.168.0.0/20", subnetOf(n))
	}
	env.create(NetworkCreateConfig{Name: "rest", Subnet: netip.MustParsePrefix("192.168.16.0/20")})
	if n := env.create(NetworkCreateConfig{Name: "c2"}); subnetOf(n) != "192.168.32.0/20 gw 192.168.32.1" {
		t.Errorf("pool after a taken 192.168.16.0/20: %s, want 192.168.32.0/20", subnetOf(n))
	}
	for c := 48; c < 256; c += 16 {
		env.create(NetworkCreateConfig{Name: fmt.Sprintf("c%d", c)})
	}
	before := env.netSummaries()
	_, err := env.e.NetworkCreate(context.Background(), NetworkCreateConfig{Name: "one-too-many"})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "non-overlapping IPv4 address pool") || !strings.Contains(err.Error(), "--subnet") {
		t.Errorf("create with every pool taken = %v, want a conflict naming the pools and --subnet", err)
	}
	if diff := cmp.Diff(before, env.netSummaries()); diff != "" {
		t.Errorf("a failed create changed the networks (-before +after):\n%s", diff)
	}
}

// TestNetworkCreateInvalid: every bad request is refused with an error of
// the right kind naming the culprit, and changes nothing: no network, no
// data path, no record (checked again after a restart).
func TestNetworkCreateInvalid(t *testing.T) {
	env := newTestEnv(t)
	env.create(NetworkCreateConfig{Name: "taken", Subnet: netip.MustParsePrefix("10.10.0.0/16")})
	tests := []struct {
		name    string
		cfg     NetworkCreateConfig
		kind    error
		mention string
	}{
		{"no name", NetworkCreateConfig{}, ErrInvalid, "no network name"},
		{"bad name", NetworkCreateConfig{Name: "bad/name"}, ErrInvalid, `"bad/name"`},
		{"leading dash", NetworkCreateConfig{Name: "-x"}, ErrInvalid, `"-x"`},
		{"looks like an ID", NetworkCreateConfig{Name: strings.Repeat("a", 64)}, ErrInvalid, "64-digit ID"},
		{"reserved bridge", NetworkCreateConfig{Name: "bridge"}, ErrInvalid, `"bridge" is reserved`},
		{"reserved host", NetworkCreateConfig{Name: "host"}, ErrInvalid, `"host" is reserved`},
		{"reserved none", NetworkCreateConfig{Name: "none"}, ErrInvalid, `"none" is reserved`},
		{"reserved default", NetworkCreateConfig{Name: "default"}, ErrInvalid, `"default" is reserved`},
		{"duplicate name", NetworkCreateConfig{Name: "taken"}, ErrConflict, "network with name taken already exists"},
		{"unknown driver", NetworkCreateConfig{Name: "n", Driver: "overlay"}, ErrInvalid, `"overlay" is not supported`},
		{"unknown option", NetworkCreateConfig{Name: "n", Options: map[string]string{"com.docker.network.bridge.name": "br9"}}, ErrInvalid, "com.docker.network.bridge.name"},
		{"mtu not a number", NetworkCreateConfig{Name: "n", Options: map[string]string{OptionMTU: "big"}}, ErrInvalid, "mtu=big"},
		{"mtu too small", NetworkCreateConfig{Name: "n", Options: map[string]string{OptionMTU: "67"}}, ErrInvalid, "from 68 to 65520"},
		{"mtu too large", NetworkCreateConfig{Name: "n", Options: map[string]string{OptionMTU: "65521"}}, ErrInvalid, "mtu=65521"},
		{"icc not a bool", NetworkCreateConfig{Name: "n", Options: map[string]string{OptionICC: "maybe"}}, ErrInvalid, "enable_icc=maybe"},
		{"empty label key", NetworkCreateConfig{Name: "n", Labels: map[string]string{"": "v"}}, ErrInvalid, "--label"},
		{"ipv6 subnet", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("fd00::/64")}, ErrInvalid, "only IPv4"},
		{"host bits in subnet", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("172.28.5.3/16")}, ErrInvalid, "it should be 172.28.0.0/16"},
		{"subnet too small", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("10.9.0.0/31")}, ErrInvalid, "too small"},
		{"gateway outside", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("10.20.0.0/24"), Gateway: netip.MustParseAddr("10.20.1.1")}, ErrInvalid, "gateway 10.20.1.1 is outside subnet 10.20.0.0/24"},
		{"gateway is the network address", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("10.20.0.0/24"), Gateway: netip.MustParseAddr("10.20.0.0")}, ErrInvalid, "10.20.0.0"},
		{"gateway without subnet", NetworkCreateConfig{Name: "n", Gateway: netip.MustParseAddr("10.20.0.1")}, ErrInvalid, "needs --subnet"},
		{"ip range without subnet", NetworkCreateConfig{Name: "n", IPRange: netip.MustParsePrefix("10.20.0.0/25")}, ErrInvalid, "needs --subnet"},
		{"ip range outside", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("10.20.0.0/24"), IPRange: netip.MustParsePrefix("10.21.0.0/25")}, ErrInvalid, "not inside subnet"},
		{"ip range wider", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("10.20.0.0/24"), IPRange: netip.MustParsePrefix("10.20.0.0/23")}, ErrInvalid, "not inside subnet"},
		{"overlaps the default bridge", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("172.17.5.0/24")}, ErrConflict, "overlaps network bridge (172.17.0.0/16)"},
		{"overlaps a user network", NetworkCreateConfig{Name: "n", Subnet: netip.MustParsePrefix("10.0.0.0/8")}, ErrConflict, "overlaps network taken (10.10.0.0/16)"},
	}
	before := env.netSummaries()
	bridgesBefore := len(env.bridges)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := env.e.NetworkCreate(context.Background(), tc.cfg)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("NetworkCreate = %q, %v; want a %v error mentioning %q", id, err, tc.kind, tc.mention)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error has several lines: %q", err)
			}
			if diff := cmp.Diff(before, env.netSummaries()); diff != "" {
				t.Errorf("networks changed (-before +after):\n%s", diff)
			}
		})
	}
	if len(env.bridges) != bridgesBefore {
		t.Errorf("bad requests brought up %d data paths", len(env.bridges)-bridgesBefore)
	}
	env.e.Close()
	env.open()
	if diff := cmp.Diff(before, env.netSummaries()); diff != "" {
		t.Errorf("networks after a restart (-before +after):\n%s", diff)
	}
}

// TestNetworkCreateRollback: a data path that fails to come up leaves no
// trace, and the same name and subnet are free for the next try.
func TestNetworkCreateRollback(t *testing.T) {
	env := newTestEnv(t)
	before := env.netSummaries()
	env.mu.Lock()
	env.failBridge = errors.New("gateway: no stack for you")
	env.mu.Unlock()
	cfg := NetworkCreateConfig{Name: "flaky", Subnet: netip.MustParsePrefix("10.30.0.0/16")}
	if _, err := env.e.NetworkCreate(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "create network flaky: gateway: no stack for you") {
		t.Fatalf("NetworkCreate with a failing data path = %v", err)
	}
	if diff := cmp.Diff(before, env.netSummaries()); diff != "" {
		t.Errorf("networks changed (-before +after):\n%s", diff)
	}
	env.e.mu.Lock()
	pending := len(env.e.pending)
	env.e.mu.Unlock()
	if pending != 0 {
		t.Errorf("%d creates still pending after the failure", pending)
	}
	env.mu.Lock()
	env.failBridge = nil
	env.mu.Unlock()
	if n := env.create(cfg); subnetOf(n) != "10.30.0.0/16 gw 10.30.0.1" {
		t.Errorf("retry got %s", subnetOf(n))
	}
	env.e.Close()
	env.open()
	if _, err := env.e.NetworkInspect("flaky"); err != nil {
		t.Errorf("the retried network is gone after a restart: %v", err)
	}
}

// TestUserNetworkRun: a sandbox on a user-defined network gets its
// addresses, MTU and files from that network, and the views show it as
// Docker does.
func TestUserNetworkRun(t *testing.T) {
	env := newTestEnv(t)
	n := env.create(NetworkCreateConfig{
		Name:    "fast",
		Subnet:  netip.MustParsePrefix("10.40.0.0/24"),
		Options: map[string]string{OptionMTU: "65520", OptionICC: "FALSE"},
		Labels:  map[string]string{"team": "net"},
	})
	if diff := cmp.Diff(map[string]string{OptionMTU: "65520", OptionICC: "false"}, n.Options); diff != "" {
		t.Errorf("Options (-want +got):\n%s", diff)
	}
	if n.Driver != "bridge" || n.Scope != "local" || n.Internal || n.Labels["team"] != "net" {
		t.Errorf("network inspect = driver %q scope %q internal %v labels %v", n.Driver, n.Scope, n.Internal, n.Labels)
	}
	spec := env.bridgeOf("fast").spec
	wantSpec := bridgeSpec{Name: "fast", Gateway: netip.MustParsePrefix("10.40.0.1/24"), MAC: [6]byte{2, 0x42, 10, 40, 0, 1},
		MTU: 65520, HostLoopback: true, DisableICC: true}
	if diff := cmp.Diff(wantSpec, spec, cmpopts.IgnoreFields(bridgeSpec{}, "Logger", "Clock"), cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("data path spec (-want +got):\n%s", diff)
	}

	id, _, ls := env.run(RunConfig{Name: "aa", Network: "fast"})
	wantIface := &launchIface{Name: "eth0", MAC: [6]byte{2, 0x42, 10, 40, 0, 2}, Addr: netip.MustParsePrefix("10.40.0.2/24"),
		Gateway: netip.MustParseAddr("10.40.0.1"), MTU: 65520}
	if diff := cmp.Diff(wantIface, ls.Iface, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("eth0 (-want +got):\n%s", diff)
	}
	if !strings.HasSuffix(string(ls.Hosts), "10.40.0.2\t"+id[:12]+"\n") {
		t.Errorf("hosts = %q, want its own address and hostname last", ls.Hosts)
	}
	if want := "# Generated by usernet.\nnameserver 192.0.2.53\nsearch example.test\n"; string(ls.ResolvConf) != want {
		t.Errorf("resolv.conf = %q, want %q (as on the default bridge)", ls.ResolvConf, want)
	}
	_, _, ls2 := env.run(RunConfig{Name: "bb", Network: n.ID[:10]})
	if got := ls2.Iface.Addr.String(); got != "10.40.0.3/24" {
		t.Errorf("second sandbox (network by ID prefix) got %s, want 10.40.0.3/24", got)
	}
	if a, _ := env.bridgeOf("fast").counts(); a != 2 {
		t.Errorf("%d ports on the network's switch, want 2", a)
	}
	if a, _ := env.bridge.counts(); a != 0 {
		t.Errorf("%d ports on the default bridge's switch, want 0", a)
	}

	j, err := env.e.Inspect("aa")
	if err != nil {
		t.Fatal(err)
	}
	if j.HostConfig.NetworkMode != "fast" {
		t.Errorf("HostConfig.NetworkMode = %q, want fast", j.HostConfig.NetworkMode)
	}
	es := j.NetworkSettings.Networks["fast"]
	if es == nil || es.IPAddress != "10.40.0.2" || es.Gateway != "10.40.0.1" || es.IPPrefixLen != 24 || es.MacAddress != "02:42:0a:28:00:02" || es.NetworkID != n.ID {
		t.Errorf("NetworkSettings.Networks[fast] = %+v", es)
	}
	if ns := j.NetworkSettings; ns.IPAddress != "" || ns.Gateway != "" || ns.MacAddress != "" {
		t.Errorf("top-level NetworkSettings address fields = %q %q %q; Docker leaves them empty off the default bridge", ns.IPAddress, ns.Gateway, ns.MacAddress)
	}
	if rows := env.e.List(false); len(rows) != 2 || rows[0].Networks[0] != "fast" {
		t.Errorf("ps rows = %+v, want two on fast", rows)
	}
	n, _ = env.e.NetworkInspect("fast")
	if got := n.Containers[id]; got.Name != "aa" || got.IPv4Address != "10.40.0.2/24" || got.MacAddress != "02:42:0a:28:00:02" {
		t.Errorf("network inspect Containers[a] = %+v", got)
	}
}

// TestIPRange: sandboxes get addresses of the range only, the range's
// first address included (as Docker), never the gateway.
func TestIPRange(t *testing.T) {
	env := newTestEnv(t)
	n := env.create(NetworkCreateConfig{Name: "ranged", Subnet: netip.MustParsePrefix("10.50.0.0/16"),
		Gateway: netip.MustParseAddr("10.50.1.0"), IPRange: netip.MustParsePrefix("10.50.1.0/30")})
	if got := n.IPAM.Config[0].IPRange; got != "10.50.1.0/30" {
		t.Errorf("IPAM.Config[0].IPRange = %q", got)
	}
	var got []string
	for range 3 {
		_, _, ls := env.run(RunConfig{Network: "ranged"})
		got = append(got, ls.Iface.Addr.String())
	}
	if diff := cmp.Diff([]string{"10.50.1.1/16", "10.50.1.2/16", "10.50.1.3/16"}, got); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if _, _, err := env.e.Run(context.Background(), RunConfig{Args: []string{"true"}, Detach: true, Network: "ranged"}); !errors.Is(err, ErrConflict) {
		t.Errorf("fourth sandbox in a range of three = %v, want ErrConflict (exhausted)", err)
	}
}

// TestInternalNetwork: the data path is told, and published ports are
// discarded with a warning instead of listening.
func TestInternalNetwork(t *testing.T) {
	env := newTestEnv(t)
	n := env.create(NetworkCreateConfig{Name: "sealed", Internal: true})
	if !n.Internal || !env.bridgeOf("sealed").spec.Internal {
		t.Fatalf("Internal not carried: inspect %v, data path %v", n.Internal, env.bridgeOf("sealed").spec.Internal)
	}
	env.clock.Advance(1)
	id, warnings, err := env.e.Run(context.Background(), RunConfig{Args: []string{"sleep", "9"}, Detach: true, Network: "sealed",
		Ports: []PortBinding{{ContainerPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"Published ports are discarded on internal network sealed"}, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	if _, p := env.bridgeOf("sealed").counts(); p != 0 {
		t.Errorf("%d ports published on an internal network", p)
	}
	if ports, _ := env.e.Port(id); len(ports) != 0 {
		t.Errorf("Port = %v, want none", ports)
	}
}

// TestNetworkRemove: refused for predefined networks and while a sandbox
// is attached, with Docker's wording; then the record, the allocations
// and the data path go.
func TestNetworkRemove(t *testing.T) {
	env := newTestEnv(t)
	for _, name := range []string{"bridge", "host", "none"} {
		err := env.e.NetworkRemove(name)
		if want := name + " is a pre-defined network and cannot be removed"; err == nil || err.Error() != want {
			t.Errorf("NetworkRemove(%s) = %v, want %q", name, err, want)
		}
	}
	if err := env.e.NetworkRemove("nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("NetworkRemove(nosuch) = %v, want ErrNotFound", err)
	}
	n := env.create(NetworkCreateConfig{Name: "busy"})
	id, p, _ := env.run(RunConfig{Name: "web", Network: "busy"})
	err := env.e.NetworkRemove("busy")
	want := fmt.Sprintf(`error while removing network: network busy has active endpoints (name:"web" id:%q)`, id[:12])
	if !errors.Is(err, ErrConflict) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("NetworkRemove while in use = %v, want a conflict starting %q", err, want)
	}
	if _, err := env.e.NetworkInspect("busy"); err != nil {
		t.Errorf("refused remove took the network away: %v", err)
	}
	p.exit(0)
	if _, err := env.e.Wait(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if err := env.e.NetworkRemove(n.ID[:12]); err != nil {
		t.Fatalf("NetworkRemove after the sandbox exited = %v", err)
	}
	if !env.bridgeOf("busy").isClosed() {
		t.Error("the removed network's data path is still up")
	}
	if _, err := env.e.NetworkInspect("busy"); !errors.Is(err, ErrNotFound) {
		t.Errorf("NetworkInspect after remove = %v, want ErrNotFound", err)
	}
	// The exited sandbox's record stays, still naming its network.
	if j, err := env.e.Inspect("web"); err != nil || j.HostConfig.NetworkMode != "busy" {
		t.Errorf("Inspect(web) after its network was removed = %v, %v", j.HostConfig.NetworkMode, err)
	}
	// The name and the subnet are free again, and stay removed after a restart.
	env.e.Close()
	env.open()
	if _, err := env.e.NetworkInspect("busy"); !errors.Is(err, ErrNotFound) {
		t.Errorf("NetworkInspect after remove and restart = %v, want ErrNotFound", err)
	}
	if n2 := env.create(NetworkCreateConfig{Name: "busy"}); subnetOf(n2) != subnetOf(n) {
		t.Errorf("recreated network got %s, want the freed %s", subnetOf(n2), subnetOf(n))
	}
}

// TestNetworkPrune removes the unused user-defined networks only.
func TestNetworkPrune(t *testing.T) {
	env := newTestEnv(t)
	if names, err := env.e.NetworkPrune(); err != nil || names == nil || len(names) != 0 {
		t.Errorf("NetworkPrune with nothing to prune = %#v, %v; want an empty list", names, err)
	}
	for _, name := range []string{"zeta", "alpha", "used"} {
		env.create(NetworkCreateConfig{Name: name})
	}
	env.run(RunConfig{Network: "used"})
	names, err := env.e.NetworkPrune()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"alpha", "zeta"}, names); diff != "" {
		t.Errorf("pruned (-want +got):\n%s", diff)
	}
	var left []string
	for _, s := range env.netSummaries() {
		left = append(left, s.Name)
	}
	if diff := cmp.Diff([]string{"bridge", "host", "none", "used"}, left); diff != "" {
		t.Errorf("networks left (-want +got):\n%s", diff)
	}
	for _, name := range []string{"alpha", "zeta"} {
		if !env.bridgeOf(name).isClosed() {
			t.Errorf("pruned network %s's data path is still up", name)
		}
	}
}

// TestNetworkPersists: a user-defined network comes back after a restart
// with its ID, configuration and data path, and its addresses are free.
func TestNetworkPersists(t *testing.T) {
	env := newTestEnv(t)
	n := env.create(NetworkCreateConfig{Name: "keep", Subnet: netip.MustParsePrefix("10.60.0.0/24"),
		Gateway: netip.MustParseAddr("10.60.0.254"), IPRange: netip.MustParsePrefix("10.60.0.128/25"), Internal: true,
		Options: map[string]string{OptionMTU: "9000", OptionICC: "false"}, Labels: map[string]string{"k": "v"}})
	env.run(RunConfig{Network: "keep"})
	before := env.netSummaries()
	env.e.Close()
	env.open()
	if diff := cmp.Diff(before, env.netSummaries()); diff != "" {
		t.Errorf("networks after restart (-before +after):\n%s", diff)
	}
	got, err := env.e.NetworkInspect("keep")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(n, got); diff != "" {
		t.Errorf("network inspect after restart (-before +after):\n%s", diff)
	}
	spec := env.bridgeOf("keep").spec
	if spec.MTU != 9000 || !spec.Internal || !spec.DisableICC || spec.Gateway != netip.MustParsePrefix("10.60.0.254/24") {
		t.Errorf("data path after restart = %+v", spec)
	}
	// The sandbox died with the old daemon: its address is free again.
	if _, _, ls := env.run(RunConfig{Network: "keep"}); ls.Iface.Addr.String() != "10.60.0.128/24" {
		t.Errorf("first sandbox after restart got %v, want 10.60.0.128/24", ls.Iface.Addr)
	}
}
