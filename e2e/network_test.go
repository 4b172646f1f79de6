package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// networkJSON is the part of `usernet network inspect` the tests read
// (Docker's shape).
type networkJSON struct {
	Name     string
	ID       string `json:"Id"`
	Driver   string
	Internal bool
	IPAM     struct {
		Config []struct{ Subnet, IPRange, Gateway string }
	}
	Containers map[string]struct {
		Name        string
		MacAddress  string
		IPv4Address string
	}
	Options map[string]string
	Labels  map[string]string
}

// createNetwork runs `usernet network create args...` (the last argument is
// the name), checks that it prints the new network's ID, and removes the
// network when the test ends, after the sandboxes on it.
func (h *harness) createNetwork(t *testing.T, args ...string) string {
	t.Helper()
	out := h.ok(t, append([]string{"network", "create"}, args...)...)
	id := strings.TrimSpace(out)
	if !isFullID(id) {
		t.Fatalf("usernet network create %s printed %q, want the network's 64-hex-digit ID on one line", strings.Join(args, " "), out)
	}
	name := args[len(args)-1]
	t.Cleanup(func() {
		if ids := h.psAll(t); len(ids) > 0 {
			h.ok(t, append([]string{"rm", "-f"}, ids...)...)
		}
		if r := h.usernet(t, "network", "rm", name); r.code != 0 && !strings.Contains(r.stderr, "no such network") {
			t.Errorf("removing network %s at the end: %s", name, r)
		}
	})
	return id
}

// inspectNetwork returns `usernet network inspect ref`, which must be one network.
func (h *harness) inspectNetwork(t *testing.T, ref string) networkJSON {
	t.Helper()
	out := h.ok(t, "network", "inspect", ref)
	var ns []networkJSON
	if err := json.Unmarshal([]byte(out), &ns); err != nil || len(ns) != 1 {
		t.Fatalf("usernet network inspect %s: want a JSON array of one network (%v):\n%s", ref, err, out)
	}
	return ns[0]
}

// networkNames returns the NAME column of `usernet network ls`.
func (h *harness) networkNames(t *testing.T) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(h.ok(t, "network", "ls")), "\n")
	var names []string
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) >= 2 {
			names = append(names, f[1])
		}
	}
	return names
}

// addrOn returns a sandbox's address, MAC and gateway on the network named net.
func (h *harness) addrOn(t *testing.T, ref, net string) (ip, mac, gw string) {
	t.Helper()
	c := h.inspect(t, ref)
	n, ok := c.NetworkSettings.Networks[net]
	if !ok || n.IPAddress == "" {
		t.Fatalf("usernet inspect %s: no address on network %s: %+v", ref, net, c.NetworkSettings.Networks)
	}
	return n.IPAddress, n.MacAddress, n.Gateway
}

// TestUserNetworks covers `usernet network create/rm/prune` and `run
// --network NAME`: addresses, MTU 65520 end to end, ICC off, internal
// networks, removal rules, persistence across a daemon restart, and bad
// input that changes nothing.
func TestUserNetworks(t *testing.T) {
	h := env(t)

	t.Run("MTU 65520 network carries traffic every way", func(t *testing.T) {
		h.fresh(t)
		id := h.createNetwork(t, "--subnet", "10.89.0.0/24", "-o", "com.docker.network.driver.mtu=65520", "--label", "e2e=yes", "jumbo")
		if !slices.Contains(h.networkNames(t), "jumbo") {
			t.Errorf("network ls does not list jumbo: %v", h.networkNames(t))
		}
		port := freePort(t)
		blobPath := h.blobSite(t)
		srcID := h.runDetached(t, "--name", "src", "--network", "jumbo", "-p", fmt.Sprintf("%d:80", port),
			"/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", h.wwwDir())
		h.runDetached(t, "--name", "dst", "--network", "jumbo", "--dns", inetPeerIP, "sleep", "infinity")

		type ep struct{ IP, MAC, Gateway string }
		var got []ep
		for _, name := range []string{"src", "dst"} {
			ip, mac, gw := h.addrOn(t, name, "jumbo")
			got = append(got, ep{ip, mac, gw})
		}
		wantEPs := []ep{{"10.89.0.2", "02:42:0a:59:00:02", "10.89.0.1"}, {"10.89.0.3", "02:42:0a:59:00:03", "10.89.0.1"}}
		if diff := cmp.Diff(wantEPs, got); diff != "" {
			t.Errorf("endpoints on jumbo (-want +got):\n%s", diff)
		}
		if mode := h.inspect(t, "dst").NetworkSettings.IPAddress; mode != "" {
			t.Errorf("inspect dst: top-level IPAddress %q, want empty off the default bridge (as Docker)", mode)
		}

		link := h.ok(t, "exec", "dst", "ip", "-o", "link", "show", "dev", "eth0")
		if !strings.Contains(link, " mtu 65520 ") {
			t.Errorf("ip link show eth0 inside: want mtu 65520, got %q", link)
		}
		if route := h.ok(t, "exec", "dst", "ip", "route", "show", "default"); !strings.Contains(route, "default via 10.89.0.1 dev eth0") {
			t.Errorf("ip route show default inside: got %q, want default via 10.89.0.1", route)
		}
		if hosts := h.ok(t, "exec", "src", "cat", "/etc/hosts"); !hasHostsEntry(hosts, "10.89.0.2", srcID[:12]) {
			t.Errorf("/etc/hosts inside src lacks \"10.89.0.2 %s\":\n%s", srcID[:12], hosts)
		}

		// Full-size frames cross the switch whole: a 65492-byte ping with
		// "don't fragment" is a 65520-byte IP packet, which needs the full
		// MTU on both TAPs and, to the gateway, on its netstack NIC.
		h.ok(t, "exec", "dst", "ping", "-c1", "-W2", "-M", "do", "-s", "65492", "10.89.0.2")
		h.ok(t, "exec", "src", "ping", "-c1", "-W2", "10.89.0.3")
		h.ok(t, "exec", "dst", "ping", "-c1", "-W2", "-M", "do", "-s", "65492", "10.89.0.1")

		h.checkBulk(t, port, "10.89.0.2", blobPath)
		// The host's loopback through the gateway.
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "host here") }))
		defer srv.Close()
		hostURL := fmt.Sprintf("http://10.89.0.1:%d/", srv.Listener.Addr().(*net.TCPAddr).Port)
		if out := h.ok(t, "exec", "dst", "curl", "-sS", "--max-time", "10", hostURL); out != "host here\n" {
			t.Errorf("curl %s from dst: %q, want the host's server", hostURL, out)
		}

		n := h.inspectNetwork(t, "jumbo")
		if n.ID != id || n.Driver != "bridge" || n.Internal || n.Labels["e2e"] != "yes" || n.Options["com.docker.network.driver.mtu"] != "65520" {
			t.Errorf("network inspect jumbo: Id %q Driver %q Internal %v Labels %v Options %v", n.ID, n.Driver, n.Internal, n.Labels, n.Options)
		}
		if diff := cmp.Diff([]struct{ Subnet, IPRange, Gateway string }{{"10.89.0.0/24", "", "10.89.0.1"}}, n.IPAM.Config); diff != "" {
			t.Errorf("network inspect jumbo: IPAM.Config (-want +got):\n%s", diff)
		}
		var members []string
		for _, c := range n.Containers {
			members = append(members, c.Name+" "+c.IPv4Address+" "+c.MacAddress)
		}
		if diff := cmp.Diff([]string{"dst 10.89.0.3/24 02:42:0a:59:00:03", "src 10.89.0.2/24 02:42:0a:59:00:02"}, sorted(members)); diff != "" {
			t.Errorf("network inspect jumbo: Containers (-want +got):\n%s", diff)
		}
	})

	t.Run("default pool and address order", func(t *testing.T) {
		h.fresh(t)
		h.createNetwork(t, "pooled")
		n := h.inspectNetwork(t, "pooled")
		if diff := cmp.Diff([]struct{ Subnet, IPRange, Gateway string }{{"172.18.0.0/16", "", "172.18.0.1"}}, n.IPAM.Config); diff != "" {
			t.Errorf("first user-defined network's IPAM.Config (-want +got):\n%s", diff)
		}
		h.runDetached(t, "--name", "p1", "--network", "pooled", "sleep", "infinity")
		if ip, mac, gw := h.addrOn(t, "p1", "pooled"); ip != "172.18.0.2" || mac != "02:42:ac:12:00:02" || gw != "172.18.0.1" {
			t.Errorf("p1 on pooled: %s %s %s, want 172.18.0.2 02:42:ac:12:00:02 172.18.0.1", ip, mac, gw)
		}
		if link := h.ok(t, "exec", "p1", "ip", "-o", "link", "show", "dev", "eth0"); !strings.Contains(link, " mtu 1500 ") {
			t.Errorf("default MTU inside: %q, want mtu 1500", link)
		}
		h.ok(t, "exec", "p1", "ping", "-c1", "-W2", "172.18.0.1")
	})

	t.Run("ICC off isolates sandboxes", func(t *testing.T) {
		h.fresh(t)
		h.createNetwork(t, "--subnet", "10.90.0.0/24", "-o", "com.docker.network.bridge.enable_icc=false", "noicc")
		h.runDetached(t, "--name", "i1", "--network", "noicc", "sleep", "infinity")
		h.runDetached(t, "--name", "i2", "--network", "noicc", "sleep", "infinity")
		if r := h.usernet(t, "exec", "i1", "ping", "-c2", "-W1", "10.90.0.3"); r.code == 0 {
			t.Errorf("ping from i1 to i2 with ICC off succeeded: %s", r)
		}
		// The gateway and the outside world stay reachable.
		h.ok(t, "exec", "i1", "ping", "-c1", "-W2", "10.90.0.1")
		out := h.ok(t, "exec", "i1", "curl", "-sS", "--max-time", "10", fmt.Sprintf("http://%s:%d/", inetPeerIP, inetHTTP))
		if !strings.HasPrefix(out, inetHostIP+":") {
			t.Errorf("NAT from an ICC-off network: the server saw %q", out)
		}
	})

	t.Run("internal network has no outside reach", func(t *testing.T) {
		h.fresh(t)
		h.createNetwork(t, "--internal", "--subnet", "10.91.0.0/24", "sealed")
		if n := h.inspectNetwork(t, "sealed"); !n.Internal {
			t.Errorf("network inspect sealed: Internal false")
		}
		port := freePort(t)
		r := h.usernet(t, "run", "-d", "--name", "s1", "--network", "sealed", "-p", fmt.Sprintf("%d:80", port), "sleep", "infinity")
		if r.code != 0 || !strings.Contains(r.stderr, "Published ports are discarded") {
			t.Fatalf("run -p on an internal network: want success with a warning that ports are discarded: %s", r)
		}
		if err := portIsFree(port); err != nil {
			t.Errorf("-p %d on an internal network: the host port is held: %v", port, err)
		}
		h.runDetached(t, "--name", "s2", "--network", "sealed", "sleep", "infinity")
		h.ok(t, "exec", "s1", "ping", "-c1", "-W2", "10.91.0.3")
		h.ok(t, "exec", "s1", "ping", "-c1", "-W2", "10.91.0.1")
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "host here") }))
		defer srv.Close()
		for _, argv := range [][]string{
			{"curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s:%d/", inetPeerIP, inetHTTP)},
			{"curl", "-sS", "--max-time", "5", fmt.Sprintf("http://10.91.0.1:%d/", srv.Listener.Addr().(*net.TCPAddr).Port)},
			{"dig", "+short", "+time=1", "+tries=1", "@" + inetPeerIP, whoamiName, "TXT"},
			{"ping", "-c1", "-W2", inetPeerIP},
		} {
			if r := h.usernet(t, append([]string{"exec", "s1"}, argv...)...); r.code == 0 {
				t.Errorf("%s from an internal network succeeded: %s", strings.Join(argv, " "), r)
			}
		}
	})

	t.Run("rm refused while in use then works", func(t *testing.T) {
		h.fresh(t)
		h.createNetwork(t, "busy")
		h.runDetached(t, "--name", "b1", "--network", "busy", "sleep", "infinity")
		r := h.usernet(t, "network", "rm", "busy")
		if r.code == 0 || !strings.Contains(r.stderr, "has active endpoints") || !strings.Contains(r.stderr, `"b1"`) {
			t.Errorf("network rm busy while b1 runs: want a failure naming b1's active endpoint: %s", r)
		} else if err := oneLineError(r); err != nil {
			t.Errorf("network rm busy: %v: %s", err, r)
		}
		if !slices.Contains(h.networkNames(t), "busy") {
			t.Fatalf("the refused rm removed busy")
		}
		for _, name := range []string{"bridge", "host", "none"} {
			r := h.usernet(t, "network", "rm", name)
			if r.code == 0 || !strings.Contains(r.stderr, name+" is a pre-defined network and cannot be removed") {
				t.Errorf("network rm %s: %s", name, r)
			}
		}
		h.ok(t, "rm", "-f", "b1")
		if out := h.ok(t, "network", "rm", "busy"); out != "busy\n" {
			t.Errorf("network rm busy printed %q, want \"busy\\n\"", out)
		}
		if slices.Contains(h.networkNames(t), "busy") {
			t.Errorf("network ls still lists busy after rm")
		}
		if r := h.usernet(t, "run", "-d", "--network", "busy", "sleep", "1"); r.code != 125 || !strings.Contains(r.stderr, "busy") {
			t.Errorf("run on the removed network: want 125 naming it: %s", r)
		}
	})

	t.Run("prune removes unused networks", func(t *testing.T) {
		h.fresh(t)
		for _, name := range []string{"prune-a", "prune-b", "prune-used"} {
			h.createNetwork(t, name)
		}
		h.runDetached(t, "--name", "pu", "--network", "prune-used", "sleep", "infinity")
		if out := h.ok(t, "network", "prune", "-f"); out != "Deleted Networks:\nprune-a\nprune-b\n" {
			t.Errorf("network prune -f printed %q", out)
		}
		if diff := cmp.Diff([]string{"bridge", "host", "none", "prune-used"}, h.networkNames(t)); diff != "" {
			t.Errorf("network ls after prune (-want +got):\n%s", diff)
		}
		if out := h.ok(t, "network", "prune", "-f"); out != "" {
			t.Errorf("second prune printed %q, want nothing", out)
		}
	})

	t.Run("daemon restart keeps the network", func(t *testing.T) {
		h.fresh(t)
		id := h.createNetwork(t, "--subnet", "10.92.0.0/24", "-o", "com.docker.network.driver.mtu=65520", "keeper")
		before := h.inspectNetwork(t, "keeper")
		if err := h.stopDaemon(); err != nil {
			t.Fatal(err)
		}
		after := h.inspectNetwork(t, "keeper") // starts a new daemon
		if diff := cmp.Diff(before, after); diff != "" || after.ID != id {
			t.Errorf("network inspect keeper across a restart (-before +after):\n%s", diff)
		}
		port := freePort(t)
		token := h.website(t)
		h.runDetached(t, "--name", "k1", "--network", "keeper", "-p", fmt.Sprintf("%d:80", port),
			"/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", h.wwwDir())
		if ip, _, _ := h.addrOn(t, "k1", "keeper"); ip != "10.92.0.2" {
			t.Errorf("k1 after the restart got %s, want 10.92.0.2", ip)
		}
		if link := h.ok(t, "exec", "k1", "ip", "-o", "link", "show", "dev", "eth0"); !strings.Contains(link, " mtu 65520 ") {
			t.Errorf("MTU inside after the restart: %q", link)
		}
		h.ok(t, "exec", "k1", "ping", "-c1", "-W2", "-M", "do", "-s", "60000", "10.92.0.1")
		url := fmt.Sprintf("http://127.0.0.1:%d/", port)
		expectPage(t, url, token, "after the restart")
	})

	t.Run("bad input changes nothing", func(t *testing.T) {
		h.fresh(t)
		h.createNetwork(t, "--subnet", "10.93.0.0/24", "existing")
		tests := []struct {
			name    string
			args    []string
			mention string
		}{
			{"duplicate name", []string{"network", "create", "existing"}, "existing"},
			{"overlaps the default bridge", []string{"network", "create", "--subnet", "172.17.1.0/24", "n1"}, "172.17.1.0/24"},
			{"overlaps a user network", []string{"network", "create", "--subnet", "10.93.0.128/25", "n1"}, "existing"},
			{"gateway outside the subnet", []string{"network", "create", "--subnet", "10.94.0.0/24", "--gateway", "10.95.0.1", "n1"}, "10.95.0.1"},
			{"bad CIDR", []string{"network", "create", "--subnet", "10.94.0.0/99", "n1"}, "10.94.0.0/99"},
			{"host bits in the subnet", []string{"network", "create", "--subnet", "10.94.0.7/24", "n1"}, "10.94.0.0/24"},
			{"MTU too large", []string{"network", "create", "-o", "com.docker.network.driver.mtu=65521", "n1"}, "65521"},
			{"MTU not a number", []string{"network", "create", "-o", "com.docker.network.driver.mtu=jumbo", "n1"}, "jumbo"},
			{"unknown driver", []string{"network", "create", "--driver", "overlay", "n1"}, "overlay"},
			{"unknown option", []string{"network", "create", "-o", "com.docker.network.bridge.name=br0", "n1"}, "com.docker.network.bridge.name"},
			{"reserved bridge", []string{"network", "create", "bridge"}, "bridge"},
			{"reserved host", []string{"network", "create", "host"}, "host"},
			{"reserved none", []string{"network", "create", "none"}, "none"},
			{"run on an unknown network", []string{"run", "-d", "--network", "nosuchnet", "sleep", "1"}, "nosuchnet"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := h.ok(t, "network", "ls")
				ps := h.psAll(t)
				r := h.usernet(t, tc.args...)
				if r.code != 125 {
					t.Errorf("status %d, want 125: %s", r.code, r)
				}
				if err := oneLineError(r); err != nil {
					t.Errorf("%v: %s", err, r)
				}
				if !strings.HasPrefix(r.stderr, "usernet: ") || !strings.Contains(r.stderr, tc.mention) {
					t.Errorf("the error does not start with \"usernet: \" or name %q: %s", tc.mention, r)
				}
				if after := h.ok(t, "network", "ls"); after != before {
					t.Errorf("network ls changed from\n%s\nto\n%s", before, after)
				}
				if after := h.psAll(t); !slices.Equal(ps, after) {
					t.Errorf("ps -a changed from %v to %v", ps, after)
				}
			})
		}
	})
}
