package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestBridge is the seeds' single-host story on the default bridge network:
// sandboxes reach each other by address, the host through the gateway, the
// outside world through NAT, and the host reaches them through published ports.
func TestBridge(t *testing.T) {
	h := env(t)

	t.Run("ping by address not by name", func(t *testing.T) {
		h.fresh(t)
		// --dns points at the test's own DNS server so the failing name
		// lookup is answered (NXDOMAIN) instead of leaving the machine.
		h.runDetached(t, "--name", "aa", "--dns", inetPeerIP, "sleep", "infinity")
		h.runDetached(t, "--name", "bb", "--dns", inetPeerIP, "sleep", "infinity")
		if got := h.ipOf(t, "aa"); got != "172.17.0.2" {
			t.Errorf("first sandbox on an empty bridge got %s, want 172.17.0.2", got)
		}
		if got := h.ipOf(t, "bb"); got != "172.17.0.3" {
			t.Errorf("second sandbox got %s, want 172.17.0.3", got)
		}
		h.ok(t, "exec", "aa", "ping", "-c1", "-W2", "172.17.0.3")
		h.ok(t, "exec", "bb", "ping", "-c1", "-W2", "172.17.0.2")
		// The default bridge has no name resolution (Docker's rule).
		if r := h.usernet(t, "exec", "aa", "ping", "-c1", "-W2", "bb"); r.code == 0 {
			t.Errorf("ping by name on the default bridge succeeded, want failure: %s", r)
		}
	})

	t.Run("ping gateway", func(t *testing.T) {
		h.fresh(t)
		h.runDetached(t, "--name", "aa", "sleep", "infinity")
		h.ok(t, "exec", "aa", "ping", "-c1", "-W2", bridgeGateway)
	})

	t.Run("interface inside the sandbox", func(t *testing.T) {
		h.fresh(t)
		h.runDetached(t, "--name", "aa", "sleep", "infinity")
		addr := h.ok(t, "exec", "aa", "ip", "-o", "-4", "addr", "show", "dev", "eth0")
		if !strings.Contains(addr, " 172.17.0.2/16 ") {
			t.Errorf("ip addr show eth0 inside: want 172.17.0.2/16, got %q", addr)
		}
		link := h.ok(t, "exec", "aa", "ip", "-o", "link", "show", "dev", "eth0")
		if !strings.Contains(link, "link/ether 02:42:ac:11:00:02 ") {
			t.Errorf("ip link show eth0 inside: want link/ether 02:42:ac:11:00:02, got %q", link)
		}
		route := h.ok(t, "exec", "aa", "ip", "route", "show", "default")
		if !strings.Contains(route, "default via "+bridgeGateway+" dev eth0") {
			t.Errorf("ip route show default inside: want default via %s dev eth0, got %q", bridgeGateway, route)
		}
	})

	t.Run("inspect addresses", func(t *testing.T) {
		h.fresh(t)
		id := h.runDetached(t, "--name", "web", "sleep", "infinity")
		c := h.inspect(t, "web")
		ns := c.NetworkSettings
		if c.ID != id {
			t.Errorf("inspect web: Id %q, want %q (what run -d printed)", c.ID, id)
		}
		if strings.TrimPrefix(c.Name, "/") != "web" {
			t.Errorf("inspect web: Name %q, want /web", c.Name)
		}
		if !c.State.Running {
			t.Errorf("inspect web: State.Running false for a running sandbox (Status %q)", c.State.Status)
		}
		want := struct{ IP, MAC, Gateway string }{"172.17.0.2", "02:42:ac:11:00:02", bridgeGateway}
		got := struct{ IP, MAC, Gateway string }{ns.IPAddress, ns.MacAddress, ns.Gateway}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("inspect web: NetworkSettings (-want +got):\n%s", diff)
		}
		if ns.IPPrefixLen != 16 {
			t.Errorf("inspect web: IPPrefixLen %d, want 16", ns.IPPrefixLen)
		}
		br, found := ns.Networks["bridge"]
		if !found {
			t.Fatalf("inspect web: NetworkSettings.Networks has no \"bridge\": %v", ns.Networks)
		}
		gotNet := struct{ IP, MAC, Gateway string }{br.IPAddress, br.MacAddress, br.Gateway}
		if diff := cmp.Diff(want, gotNet); diff != "" {
			t.Errorf("inspect web: NetworkSettings.Networks.bridge (-want +got):\n%s", diff)
		}
		// A second sandbox: MAC follows the address (02:42 + IPv4).
		h.runDetached(t, "--name", "web2", "sleep", "infinity")
		c2 := h.inspect(t, "web2")
		if c2.NetworkSettings.IPAddress != "172.17.0.3" || c2.NetworkSettings.MacAddress != "02:42:ac:11:00:03" {
			t.Errorf("inspect web2: IPAddress %q MacAddress %q, want 172.17.0.3 02:42:ac:11:00:03",
				c2.NetworkSettings.IPAddress, c2.NetworkSettings.MacAddress)
		}
	})

	t.Run("network ls and inspect bridge", func(t *testing.T) {
		h.fresh(t)
		ls := h.ok(t, "network", "ls")
		for _, name := range []string{"bridge", "host", "none"} {
			if !regexp.MustCompile(`(?m)\s` + name + `\s`).MatchString(ls) {
				t.Errorf("usernet network ls does not list %q:\n%s", name, ls)
			}
		}
		id := h.runDetached(t, "--name", "c1", "sleep", "infinity")
		out := h.ok(t, "network", "inspect", "bridge")
		var nets []struct {
			Name   string
			ID     string `json:"Id"`
			Driver string
			IPAM   struct {
				Config []struct{ Subnet, Gateway string }
			}
			Containers map[string]struct {
				Name        string
				MacAddress  string
				IPv4Address string
			}
		}
		if err := json.Unmarshal([]byte(out), &nets); err != nil {
			t.Fatalf("usernet network inspect bridge: not a JSON array: %v\n%s", err, out)
		}
		if len(nets) != 1 {
			t.Fatalf("usernet network inspect bridge: %d objects, want 1", len(nets))
		}
		n := nets[0]
		if n.Name != "bridge" || n.Driver != "bridge" || len(n.ID) != 64 {
			t.Errorf("network inspect bridge: Name %q Driver %q Id %q, want bridge, bridge, 64 hex digits", n.Name, n.Driver, n.ID)
		}
		if diff := cmp.Diff([]struct{ Subnet, Gateway string }{{bridgeSubnet, bridgeGateway}}, n.IPAM.Config); diff != "" {
			t.Errorf("network inspect bridge: IPAM.Config (-want +got):\n%s", diff)
		}
		type member struct{ Name, MacAddress, IPv4Address string }
		got := map[string]member{}
		for k, v := range n.Containers {
			got[k] = member(v)
		}
		want := map[string]member{id: {"c1", "02:42:ac:11:00:02", "172.17.0.2/16"}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("network inspect bridge: Containers (-want +got):\n%s", diff)
		}
	})

	t.Run("address reused after rm", func(t *testing.T) {
		h.fresh(t)
		h.runDetached(t, "--name", "u1", "sleep", "infinity")
		h.runDetached(t, "--name", "u2", "sleep", "infinity")
		if got := h.ipOf(t, "u2"); got != "172.17.0.3" {
			t.Fatalf("u2 got %s, want 172.17.0.3", got)
		}
		h.ok(t, "rm", "-f", "u2")
		h.runDetached(t, "--name", "u3", "sleep", "infinity")
		if got := h.ipOf(t, "u3"); got != "172.17.0.3" {
			t.Errorf("u3 after rm -f u2 got %s, want u2's 172.17.0.3 again", got)
		}
		h.ok(t, "exec", "u1", "ping", "-c1", "-W2", "172.17.0.3")
	})

	t.Run("reach host through gateway", func(t *testing.T) {
		h.fresh(t)
		// A web server on the host's loopback only: the gateway address is
		// the host's 127.0.0.1 as seen from the sandbox.
		port := helloServer(t)
		h.runDetached(t, "--name", "aa", "sleep", "infinity")
		out := h.ok(t, "exec", "aa", "curl", "-sS", "--max-time", "10", fmt.Sprintf("http://%s:%d/", bridgeGateway, port))
		if !strings.HasPrefix(out, "host says hello to 127.0.0.1:") {
			t.Errorf("curl from the sandbox to the host through %s: got %q, want the host server's answer to a loopback client", bridgeGateway, out)
		}
	})

	t.Run("outbound TCP and UDP carry the host address", func(t *testing.T) {
		h.fresh(t)
		h.runDetached(t, "--name", "aa", "sleep", "infinity")
		out := h.ok(t, "exec", "aa", "curl", "-sS", "--max-time", "10", fmt.Sprintf("http://%s:%d/", inetPeerIP, inetHTTP))
		if !strings.HasPrefix(out, inetHostIP+":") {
			t.Errorf("TCP server outside saw the sandbox as %q, want %s:PORT (the host's address)", strings.TrimSpace(out), inetHostIP)
		}
		out = h.ok(t, "exec", "aa", "dig", "+short", "+time=2", "+tries=3", "@"+inetPeerIP, whoamiName, "TXT")
		if !strings.HasPrefix(out, `"`+inetHostIP+":") {
			t.Errorf("UDP (DNS) server outside saw the sandbox as %q, want \"%s:PORT\" (the host's address)", strings.TrimSpace(out), inetHostIP)
		}
		// Eight queries on one socket are one flow: after the first, its
		// datagrams skip netstack (stack/udpshortcut.go), and every answer
		// must still come, from one host port.
		script := fmt.Sprintf(`import re, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((%q, 53))
name = b"".join(bytes([len(l)]) + l.encode() for l in %q.strip(".").split("."))
for i in range(1, 9):
    s.send(struct.pack(">6H", i, 0x0100, 1, 0, 0, 0) + name + b"\0" + struct.pack(">HH", 16, 1))
    r = s.recv(4096)
    if struct.unpack(">H", r[:2])[0] != i:
        raise SystemExit("answer %%d has the wrong ID" %% i)
    print(re.search(rb"[0-9.]+:[0-9]+", r).group().decode())
`, inetPeerIP, whoamiName)
		out = h.ok(t, "exec", "aa", "/usr/bin/python3", "-c", script)
		lines := strings.Fields(out)
		if len(lines) != 8 || !strings.HasPrefix(lines[0], inetHostIP+":") || len(slices.Compact(lines)) != 1 {
			t.Errorf("eight queries on one socket: the server saw %q, want one %s:PORT eight times", lines, inetHostIP)
		}
	})

	t.Run("bypass hands connections host sockets", func(t *testing.T) {
		h.fresh(t)
		port := helloServer(t)
		h.runDetached(t, "--name", "bp", "--bypass", "sleep", "infinity")
		token := h.website(t)
		h.runDetached(t, "--name", "peer", "/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", h.wwwDir())
		// curl's local address tells which path a connection took: with
		// bypass it is the host socket's, not the sandbox's.
		curl := func(url string) (body, local string) {
			out := h.ok(t, "exec", "bp", "curl", "-sS", "--max-time", "10", "-w", "\n%{local_ip}", url)
			i := strings.LastIndex(out, "\n")
			return out[:i], strings.TrimSpace(out[i+1:])
		}
		body, local := curl(fmt.Sprintf("http://%s:%d/", bridgeGateway, port))
		if !strings.HasPrefix(body, "host says hello to 127.0.0.1:") || local != "127.0.0.1" {
			t.Errorf("curl to the host through %s with --bypass: %q from local address %s, want the host's answer to 127.0.0.1 from a host socket on 127.0.0.1", bridgeGateway, body, local)
		}
		body, local = curl(fmt.Sprintf("http://%s:%d/", inetPeerIP, inetHTTP))
		if !strings.HasPrefix(body, inetHostIP+":") || local != inetHostIP {
			t.Errorf("curl to %s with --bypass: server saw %q, local address %s; want both to be the host's %s", inetPeerIP, body, local, inetHostIP)
		}
		// On the network, connections stay the sandbox's own.
		peer := h.ipOf(t, "peer")
		eventually(t, 10*time.Second, "the page from sandbox peer", func() error {
			r := h.usernet(t, "exec", "bp", "curl", "-sS", "--max-time", "5", "-w", "\n%{local_ip}", "http://"+peer+"/")
			out := r.stdout
			i := strings.LastIndex(out, "\n")
			if r.code != 0 || i < 0 {
				return fmt.Errorf("curl: %s", r)
			}
			if body, local := out[:i], strings.TrimSpace(out[i+1:]); !strings.Contains(body, token) || local != h.ipOf(t, "bp") {
				return fmt.Errorf("curl to sandbox %s with --bypass: %q from %s, want the page from the sandbox's own address %s", peer, body, local, h.ipOf(t, "bp"))
			}
			return nil
		})
		// UDP, and a closed port, answer as they do through NAT.
		out := h.ok(t, "exec", "bp", "dig", "+short", "+time=2", "+tries=3", "@"+inetPeerIP, whoamiName, "TXT")
		if !strings.HasPrefix(out, `"`+inetHostIP+":") {
			t.Errorf("DNS from a --bypass sandbox: %q, want \"%s:PORT\"", strings.TrimSpace(out), inetHostIP)
		}
		if r := h.usernet(t, "exec", "bp", "curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s:%d/", bridgeGateway, freePort(t))); r.code != 7 {
			t.Errorf("curl to a closed host port with --bypass: want connection refused (exit 7): %s", r)
		}
		// Bad input is refused and leaves nothing behind.
		h.createNetwork(t, "--internal", "--subnet", "10.92.0.0/24", "sealed")
		for _, tc := range []struct{ network, mention string }{{"host", "bridge"}, {"none", "bridge"}, {"sealed", "internal"}} {
			r := h.usernet(t, "run", "-d", "--name", "bad", "--bypass", "--network", tc.network, "sleep", "infinity")
			if r.code == 0 || !strings.Contains(r.stderr, "--bypass") || !strings.Contains(r.stderr, tc.mention) {
				t.Errorf("run --bypass --network %s: want an error naming --bypass and %q: %s", tc.network, tc.mention, r)
			}
		}
		if r := h.usernet(t, "inspect", "bad"); r.code == 0 {
			t.Errorf("a refused run --bypass left a sandbox: %s", r)
		}
	})

	t.Run("publish port", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		token := h.website(t)
		h.runDetached(t, "--name", "web", "-p", fmt.Sprintf("%d:80", port), "/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", h.wwwDir())
		if got, want := h.ok(t, "port", "web"), fmt.Sprintf("80/tcp -> 0.0.0.0:%d\n", port); got != want {
			t.Errorf("usernet port web: got %q, want %q", got, want)
		}
		url := fmt.Sprintf("http://127.0.0.1:%d/", port)
		expectPage(t, url, token, "from the host")
		c := h.inspect(t, "web")
		wantPorts := fmt.Sprintf("[{0.0.0.0 %d}]", port)
		if got := fmt.Sprint(c.NetworkSettings.Ports["80/tcp"]); got != wantPorts {
			t.Errorf("inspect web: NetworkSettings.Ports[\"80/tcp\"] = %s, want %s", got, wantPorts)
		}
		// Loopback clients appear as the gateway inside (python logs the
		// client address on stderr, which logs shows).
		eventually(t, 10*time.Second, "python's access log in usernet logs web", func() error {
			r := h.usernet(t, "logs", "web")
			if !strings.Contains(r.stdout+r.stderr, bridgeGateway+` - - [`) {
				return fmt.Errorf("no request from %s logged: %s", bridgeGateway, r)
			}
			return nil
		})
		h.checkDirect(t, "web")
	})

	t.Run("several sandboxes publish ports", func(t *testing.T) {
		h.fresh(t)
		type site struct {
			name, token string
			port        int
		}
		var sites []site
		for i := range 3 {
			s := site{name: fmt.Sprintf("web%d", i), token: fmt.Sprintf("site-%d-%d", i, time.Now().UnixNano()), port: freePort(t)}
			dir := filepath.Join(h.wwwDir(), s.name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(s.token+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			h.runDetached(t, "--name", s.name, "-p", fmt.Sprintf("%d:80", s.port), "/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", dir)
			sites = append(sites, s)
		}
		for _, s := range sites {
			url := fmt.Sprintf("http://127.0.0.1:%d/", s.port)
			eventually(t, 20*time.Second, "GET "+url+" ("+s.name+")", func() error {
				body, err := httpGet(url)
				if err == nil && strings.TrimSpace(body) != s.token {
					err = fmt.Errorf("body %q, want %s's %q", body, s.name, s.token)
				}
				return err
			})
		}
	})

	t.Run("published port keeps a remote client's address", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		token := h.website(t)
		h.runDetached(t, "--name", "web", "-p", fmt.Sprintf("%d:80", port), "/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", h.wwwDir())
		// A client in the "internet" namespace connects to the host's
		// address on that side; the sandbox must see the client's address.
		addr := net.JoinHostPort(inetHostIP, strconv.Itoa(port))
		eventually(t, 20*time.Second, "GET http://"+addr+"/ from "+inetNS, func() error {
			var conn net.Conn
			// The socket must be made on the thread inside the namespace
			// (net/http would dial from another goroutine).
			if err := inNetns(inetNS, func() error {
				var err error
				conn, err = net.DialTimeout("tcp4", addr, 3*time.Second)
				return err
			}); err != nil {
				return err
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: e2e\r\n\r\n"); err != nil {
				return err
			}
			body, err := io.ReadAll(conn)
			if err == nil && !strings.Contains(string(body), token) {
				err = fmt.Errorf("answer %q lacks %q", body, token)
			}
			return err
		})
		eventually(t, 10*time.Second, "python's access log in usernet logs web", func() error {
			r := h.usernet(t, "logs", "web")
			if !strings.Contains(r.stdout+r.stderr, inetPeerIP+` - - [`) {
				return fmt.Errorf("no request from %s logged: %s", inetPeerIP, r)
			}
			return nil
		})
		h.checkDirect(t, "web")
	})

	t.Run("published port with nothing listening resets the client", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		h.runDetached(t, "--name", "idle", "-p", fmt.Sprintf("%d:80", port), "sleep", "600")
		// The reset must come at once, not after the SYN retries into a
		// port nothing listens on (a few seconds is plenty of slack).
		conn, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			return // the reset came before the dial saw the handshake end
		}
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("read from a published port with nothing listening: %v, want connection reset at once", err)
		}
	})

	t.Run("publish UDP port", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		h.runDetached(t, "--name", "udp", "-p", fmt.Sprintf("%d:5353/udp", port), "/usr/bin/python3", "-c", udpPeerEcho)
		if got, want := h.ok(t, "port", "udp"), fmt.Sprintf("5353/udp -> 0.0.0.0:%d\n", port); got != want {
			t.Errorf("usernet port udp: got %q, want %q", got, want)
		}
		conn, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		buf := make([]byte, 2048)
		eventually(t, 20*time.Second, fmt.Sprintf("UDP echo through 127.0.0.1:%d", port), func() error {
			if _, err := conn.Write([]byte("ping")); err != nil {
				return err
			}
			_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := conn.Read(buf)
			if err != nil {
				return err
			}
			if got := string(buf[:n]); !strings.HasPrefix(got, bridgeGateway+":") || !strings.HasSuffix(got, " ping") {
				return fmt.Errorf("reply %q, want \"%s:PORT ping\" (loopback clients appear as the gateway)", got, bridgeGateway)
			}
			return nil
		})
		// The flow's later datagrams skip netstack in both directions
		// (stack/udpshortcut.go) unless they need fragments, which it
		// leaves to netstack: every size must come back whole.
		big := make([]byte, 65535)
		for _, size := range []int{1, 100, 1400, 1472, 3000, 9000, 1, 64} {
			msg := strings.Repeat("u", size)
			if _, err := conn.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := conn.Read(big)
			if err != nil {
				t.Fatalf("reply to a %d-byte datagram: %v", size, err)
			}
			if got := string(big[:n]); !strings.HasPrefix(got, bridgeGateway+":") || !strings.HasSuffix(got, " "+msg) {
				t.Fatalf("reply to a %d-byte datagram: %d bytes %.40q, want \"%s:PORT \" and the datagram", size, n, got, bridgeGateway)
			}
		}
	})

	t.Run("published UDP port keeps a remote client's address", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		h.runDetached(t, "--name", "udpr", "-p", fmt.Sprintf("%d:5353/udp", port), "/usr/bin/python3", "-c", udpPeerEcho)
		// A client in the "internet" namespace sends to the host's address
		// on that side. Its first datagram goes through netstack, the rest
		// past it (stack/udpshortcut.go); the sandbox must see the client's
		// address on every one.
		addr := net.JoinHostPort(inetHostIP, strconv.Itoa(port))
		var conn net.Conn
		if err := inNetns(inetNS, func() error {
			var err error
			conn, err = net.Dial("udp4", addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		buf := make([]byte, 2048)
		exchange := func(msg string) error {
			if _, err := conn.Write([]byte(msg)); err != nil {
				return err
			}
			_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := conn.Read(buf)
			if err != nil {
				return err
			}
			if got := string(buf[:n]); !strings.HasPrefix(got, inetPeerIP+":") || !strings.HasSuffix(got, " "+msg) {
				return fmt.Errorf("reply %q, want \"%s:PORT %s\" (the client's own address)", got, inetPeerIP, msg)
			}
			return nil
		}
		eventually(t, 20*time.Second, "UDP echo through "+addr+" from "+inetNS, func() error { return exchange("first") })
		for i := range 5 {
			if err := exchange(fmt.Sprint("datagram ", i)); err != nil {
				t.Fatalf("after the first: %v", err)
			}
		}
	})

	t.Run("bulk transfers keep every byte", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		blobPath := h.blobSite(t)
		h.runDetached(t, "--name", "src", "-p", fmt.Sprintf("%d:80", port), "/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", h.wwwDir())
		h.runDetached(t, "--name", "dst", "sleep", "infinity")
		h.checkBulk(t, port, h.ipOf(t, "src"), blobPath)
	})

	t.Run("publish all exposed ports", func(t *testing.T) {
		h.fresh(t)
		token := h.website(t)
		h.runDetached(t, "--name", "pub", "-P", "--expose", "80", "/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", h.wwwDir())
		out := h.ok(t, "port", "pub")
		m := regexp.MustCompile(`^80/tcp -> 0\.0\.0\.0:(\d+)\n$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("usernet port pub: got %q, want one line 80/tcp -> 0.0.0.0:PORT", out)
		}
		url := "http://127.0.0.1:" + m[1] + "/"
		expectPage(t, url, token, "(the port -P picked)")
	})

	t.Run("port output", func(t *testing.T) {
		h.fresh(t)
		p1, p2 := freePort(t), freePort(t)
		for p2 == p1 {
			p2 = freePort(t)
		}
		h.runDetached(t, "--name", "pp", "-p", fmt.Sprintf("%d:80", p1), "-p", fmt.Sprintf("127.0.0.1:%d:53/udp", p2), "sleep", "infinity")
		got := strings.Split(strings.TrimRight(h.ok(t, "port", "pp"), "\n"), "\n")
		want := []string{fmt.Sprintf("53/udp -> 127.0.0.1:%d", p2), fmt.Sprintf("80/tcp -> 0.0.0.0:%d", p1)}
		if diff := cmp.Diff(want, sorted(got)); diff != "" {
			t.Errorf("usernet port pp (-want +got, sorted):\n%s", diff)
		}
		for _, arg := range []string{"80", "80/tcp"} {
			if out := strings.TrimSpace(h.ok(t, "port", "pp", arg)); !strings.HasSuffix(out, fmt.Sprintf("0.0.0.0:%d", p1)) {
				t.Errorf("usernet port pp %s: got %q, want 0.0.0.0:%d", arg, out, p1)
			}
		}
		if out := strings.TrimSpace(h.ok(t, "port", "pp", "53/udp")); !strings.HasSuffix(out, fmt.Sprintf("127.0.0.1:%d", p2)) {
			t.Errorf("usernet port pp 53/udp: got %q, want 127.0.0.1:%d", out, p2)
		}
		r := h.usernet(t, "port", "pp", "81")
		if r.code == 0 {
			t.Errorf("usernet port pp 81 (not published) succeeded: %s", r)
		} else if err := oneLineError(r); err != nil {
			t.Errorf("usernet port pp 81: %v: %s", err, r)
		}
	})

	t.Run("killed command releases address and port", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		marker := strconv.Itoa(86000 + int(time.Now().UnixNano()%400))
		h.runDetached(t, "--name", "kk", "-p", fmt.Sprintf("%d:80", port), "sleep", marker)
		ip := h.ipOf(t, "kk")
		var p process
		eventually(t, 10*time.Second, "the sandbox's sleep process", func() error {
			var found bool
			if p, found = h.findProcess("sleep", marker); !found {
				return fmt.Errorf("no process `sleep %s` of %s", marker, testUser)
			}
			return nil
		})
		if err := portIsFree(port); err == nil {
			t.Fatalf("published port %d is not held while the sandbox runs", port)
		}
		if err := killPID(p.pid); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "inspect kk after its command was killed", func() error {
			if c := h.inspect(t, "kk"); c.State.Running {
				return fmt.Errorf("State.Running still true (Status %q)", c.State.Status)
			}
			return nil
		})
		eventually(t, 10*time.Second, fmt.Sprintf("host port %d free again", port), func() error { return portIsFree(port) })
		if ids := strings.Fields(h.ok(t, "ps", "-q")); len(ids) != 0 {
			t.Errorf("usernet ps -q lists %v after the only sandbox's command died", ids)
		}
		h.runDetached(t, "--name", "k2", "sleep", "infinity")
		if got := h.ipOf(t, "k2"); got != ip {
			t.Errorf("next sandbox got %s, want the released %s", got, ip)
		}
	})

	t.Run("hosts resolv.conf and hostname", func(t *testing.T) {
		h.fresh(t)
		before := hashFiles(t, "/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
		hostHostname, _ := os.Hostname()

		id := h.runDetached(t, "--name", "plain", "sleep", "infinity")
		if got := strings.TrimSpace(h.ok(t, "exec", "plain", "hostname")); got != id[:12] {
			t.Errorf("hostname inside without --hostname: %q, want the ID's first 12 digits %q", got, id[:12])
		}
		hosts := h.ok(t, "exec", "plain", "cat", "/etc/hosts")
		if !hasHostsEntry(hosts, "172.17.0.2", id[:12]) {
			t.Errorf("/etc/hosts inside lacks \"172.17.0.2 %s\":\n%s", id[:12], hosts)
		}
		if !hasHostsEntry(hosts, "127.0.0.1", "localhost") {
			t.Errorf("/etc/hosts inside lacks localhost:\n%s", hosts)
		}

		h.runDetached(t, "--name", "custom", "--hostname", "myhost", "--add-host", "db.example:10.1.2.3",
			"--dns", inetPeerIP, "--dns-search", "e2e.test", "sleep", "infinity")
		if got := strings.TrimSpace(h.ok(t, "exec", "custom", "hostname")); got != "myhost" {
			t.Errorf("hostname inside with --hostname myhost: %q", got)
		}
		if got := h.inspect(t, "custom").Config.Hostname; got != "myhost" {
			t.Errorf("inspect custom: Config.Hostname %q, want myhost", got)
		}
		hosts = h.ok(t, "exec", "custom", "cat", "/etc/hosts")
		if !hasHostsEntry(hosts, "172.17.0.3", "myhost") || !hasHostsEntry(hosts, "10.1.2.3", "db.example") {
			t.Errorf("/etc/hosts inside lacks \"172.17.0.3 myhost\" or \"10.1.2.3 db.example\":\n%s", hosts)
		}
		if out := h.ok(t, "exec", "custom", "getent", "hosts", "db.example"); !strings.HasPrefix(out, "10.1.2.3 ") {
			t.Errorf("getent hosts db.example inside: %q, want 10.1.2.3 (--add-host)", out)
		}
		resolv := h.ok(t, "exec", "custom", "cat", "/etc/resolv.conf")
		var servers, search []string
		for _, line := range strings.Split(resolv, "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "nameserver" {
				servers = append(servers, f[1])
			}
			if len(f) >= 2 && f[0] == "search" {
				search = append(search, f[1:]...)
			}
		}
		if diff := cmp.Diff([]string{inetPeerIP}, servers); diff != "" {
			t.Errorf("/etc/resolv.conf nameservers with --dns %s (-want +got):\n%s\n%s", inetPeerIP, diff, resolv)
		}
		if diff := cmp.Diff([]string{"e2e.test"}, search); diff != "" {
			t.Errorf("/etc/resolv.conf search with --dns-search e2e.test (-want +got):\n%s", diff)
		}
		// The resolver really uses them: "probe" + search domain, asked of
		// the --dns server through NAT.
		if out := h.ok(t, "exec", "custom", "getent", "hosts", "probe"); !strings.HasPrefix(out, probeAddr+" ") {
			t.Errorf("getent hosts probe inside: %q, want %s from the --dns server via the search domain", out, probeAddr)
		}

		after := hashFiles(t, "/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
		if diff := cmp.Diff(before, after); diff != "" {
			t.Errorf("the host's files changed (-before +after):\n%s", diff)
		}
		if now, _ := os.Hostname(); now != hostHostname {
			t.Errorf("the host's hostname changed from %q to %q", hostHostname, now)
		}
	})

	t.Run("network none", func(t *testing.T) {
		h.fresh(t)
		out := h.ok(t, "run", "--rm", "--network", "none", "--", "ip", "-o", "link", "show")
		var links []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(line); len(f) >= 2 {
				links = append(links, strings.TrimSuffix(f[1], ":"))
			}
		}
		if diff := cmp.Diff([]string{"lo"}, links); diff != "" {
			t.Errorf("links inside --network none (-want +got):\n%s\n%s", diff, out)
		}
		if ns := strings.TrimSpace(h.ok(t, "run", "--rm", "--network", "none", "--", "readlink", "/proc/self/ns/net")); ns == hostNetns(t) {
			t.Errorf("--network none shares the host's network namespace %s", ns)
		}
		h.runDetached(t, "--name", "nn", "--network", "none", "sleep", "infinity")
		if c := h.inspect(t, "nn"); c.NetworkSettings.IPAddress != "" {
			t.Errorf("inspect nn (--network none): IPAddress %q, want empty", c.NetworkSettings.IPAddress)
		}
	})

	t.Run("network host", func(t *testing.T) {
		h.fresh(t)
		hostNS := hostNetns(t)
		r := h.usernet(t, "run", "--rm", "--network", "host", "--", "readlink", "/proc/self/ns/net")
		if r.code != 0 || strings.TrimSpace(r.stdout) != hostNS {
			t.Errorf("--network host: want the host's namespace %s: %s", hostNS, r)
		}
		if bridged := strings.TrimSpace(h.ok(t, "run", "--rm", "--", "readlink", "/proc/self/ns/net")); bridged == hostNS {
			t.Errorf("a bridge sandbox shares the host's network namespace %s", hostNS)
		}
		port := freePort(t)
		r = h.usernet(t, "run", "-d", "--name", "hp", "--network", "host", "-p", fmt.Sprintf("%d:80", port), "sleep", "infinity")
		if r.code != 0 {
			t.Fatalf("-p with --network host must be a warning, not an error: %s", r)
		}
		if !strings.Contains(strings.ToLower(r.stderr), "discard") {
			t.Errorf("-p with --network host: stderr %q, want a warning that published ports are discarded", r.stderr)
		}
		if err := portIsFree(port); err != nil {
			t.Errorf("-p %d with --network host: the port is held by someone: %v", port, err)
		}
		if out := h.ok(t, "port", "hp"); out != "" {
			t.Errorf("usernet port hp (--network host): %q, want nothing", out)
		}
	})
}

// helloServer starts a web server on the host's loopback, closed when the
// test ends, that answers "host says hello to ADDR:PORT" with the client's
// address, and returns its port.
func helloServer(t *testing.T) int {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host says hello to %s\n", r.RemoteAddr)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

// website writes an index.html with a fresh token into the directory the
// sandboxed web servers serve, and returns the token.
func (h *harness) website(t *testing.T) string {
	t.Helper()
	token := fmt.Sprintf("usernet-e2e-%d", time.Now().UnixNano())
	dir := h.wwwDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("<p>"+token+"</p>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return token
}

func (h *harness) wwwDir() string { return filepath.Join(h.root, "www") }

// blobSite puts the test website, with testBlob as blob.bin, in wwwDir and
// returns the blob's path.
func (h *harness) blobSite(t *testing.T) string {
	t.Helper()
	h.website(t)
	blobPath := filepath.Join(h.wwwDir(), "blob.bin")
	if err := os.WriteFile(blobPath, testBlob(), 0o644); err != nil {
		t.Fatal(err)
	}
	return blobPath
}

// checkBulk moves testBlob four ways and checks every byte by its hash:
// from the host through the published port to the sandbox src (serving
// blobSite at srcIP), from src to the sandbox dst across the switch (TAP
// to TAP), and between dst and the test internet both ways through
// outbound NAT.
func (h *harness) checkBulk(t *testing.T, port int, srcIP, blobPath string) {
	t.Helper()
	want := testBlobSum()
	url := fmt.Sprintf("http://127.0.0.1:%d/blob.bin", port)
	eventually(t, 60*time.Second, "GET "+url, func() error {
		body, err := httpGetLarge(url)
		if err != nil {
			return err
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(body)); got != want {
			return fmt.Errorf("%d bytes with sha256 %s, want %d bytes with %s", len(body), got, len(testBlob()), want)
		}
		return nil
	})
	shaOf := func(what, script string) {
		t.Helper()
		out := h.ok(t, "exec", "dst", "sh", "-c", script)
		if got := strings.Fields(out); len(got) == 0 || got[0] != want {
			t.Errorf("%s: sha256 %q, want %s", what, out, want)
		}
	}
	shaOf("sandbox to sandbox", fmt.Sprintf("curl -sS --max-time 60 http://%s/blob.bin | sha256sum", srcIP))
	shaOf("download through NAT", fmt.Sprintf("curl -sS --max-time 60 http://%s:%d/blob | sha256sum", inetPeerIP, inetHTTP))
	out := h.ok(t, "exec", "dst", "curl", "-sS", "--max-time", "60", "--data-binary", "@"+blobPath, fmt.Sprintf("http://%s:%d/sink", inetPeerIP, inetHTTP))
	if got, wantOut := strings.TrimSpace(out), fmt.Sprintf("%d %s", len(testBlob()), want); got != wantOut {
		t.Errorf("upload through NAT: the server received %q, want %q", got, wantOut)
	}
}

// checkDirect checks that published connections reached the sandbox
// directly (nat/direct.go), not through the gateway: the socket that
// carries one is opened inside the sandbox, so its kernel counts active
// opens, which a server that dials nothing has none of otherwise.
func (h *harness) checkDirect(t *testing.T, name string) {
	t.Helper()
	snmp := h.ok(t, "exec", name, "cat", "/proc/net/snmp")
	var header []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if header == nil {
			header = f
			continue
		}
		for i, k := range header {
			if k == "ActiveOpens" && i < len(f) {
				if f[i] == "0" {
					t.Errorf("no TCP connection was opened inside %s: published connections went through the gateway, not directly", name)
				}
				return
			}
		}
	}
	t.Errorf("no Tcp ActiveOpens in %s's /proc/net/snmp:\n%s", name, snmp)
}

func hashFiles(t *testing.T, paths ...string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			m[p] = "unreadable: " + err.Error()
			continue
		}
		m[p] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return m
}

// hasHostsEntry reports whether an /etc/hosts text maps ip to name.
func hasHostsEntry(hosts, ip, name string) bool {
	for _, line := range strings.Split(hosts, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != ip {
			continue
		}
		for _, n := range f[1:] {
			if n == name {
				return true
			}
		}
	}
	return false
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// udpPeerEcho is a UDP server for inside a sandbox: it answers each
// datagram on port 5353 with "ADDR:PORT " (the peer it saw) and the
// datagram.
const udpPeerEcho = `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"%s:%d %s" % (peer[0].encode(), peer[1], data), peer)
`
