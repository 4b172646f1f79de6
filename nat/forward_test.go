package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestGuestSource(t *testing.T) {
	v4target := netip.MustParseAddrPort("172.17.0.2:80")
	v6target := netip.MustParseAddrPort("[fd00::2]:80")
	tests := []struct {
		name   string
		client string
		target netip.AddrPort
		want   netip.AddrPort
	}{
		{"lan client kept", "192.168.1.20:51000", v4target, netip.MustParseAddrPort("192.168.1.20:51000")},
		{"public client kept", "203.0.113.7:40000", v4target, netip.MustParseAddrPort("203.0.113.7:40000")},
		{"v4-mapped client kept unmapped", "[::ffff:192.168.1.20]:51000", v4target, netip.MustParseAddrPort("192.168.1.20:51000")},
		{"loopback is gateway", "127.0.0.1:51000", v4target, netip.AddrPort{}},
		{"other 127/8 is gateway", "127.0.0.2:51000", v4target, netip.AddrPort{}},
		{"v6 loopback is gateway", "[::1]:51000", v4target, netip.AddrPort{}},
		{"mapped loopback is gateway", "[::ffff:127.0.0.1]:51000", v4target, netip.AddrPort{}},
		{"unspecified is gateway", "0.0.0.0:51000", v4target, netip.AddrPort{}},
		{"v6 client to v4 target is gateway", "[2001:db8::7]:51000", v4target, netip.AddrPort{}},
		{"v6 client to v6 target kept", "[2001:db8::7]:51000", v6target, netip.MustParseAddrPort("[2001:db8::7]:51000")},
		{"client equal to gateway", "172.17.0.1:51000", v4target, netip.AddrPort{}},
		{"client equal to target", "172.17.0.2:51000", v4target, netip.AddrPort{}},
		{"client inside the network's subnet", "172.17.5.9:51000", v4target, netip.AddrPort{}},
		{"client just outside the subnet kept", "172.18.0.9:51000", v4target, netip.MustParseAddrPort("172.18.0.9:51000")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := guestSource(netip.MustParseAddrPort(tc.client), tc.target, gw, netip.MustParsePrefix("172.17.0.0/16"))
			if got != tc.want {
				t.Fatalf("guestSource(%s, %s) = %v, want %v", tc.client, tc.target, got, tc.want)
			}
		})
	}
}

// loopDialer stands in for the gateway: it "dials into the network" by
// dialing loopback servers playing the target, and records the sources
// it was asked for.
type loopDialer struct {
	tcp, udp netip.AddrPort
	fail     error

	mu   sync.Mutex
	srcs []netip.AddrPort
}

func (d *loopDialer) record(src netip.AddrPort) {
	d.mu.Lock()
	d.srcs = append(d.srcs, src)
	d.mu.Unlock()
}

func (d *loopDialer) sources() []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]netip.AddrPort(nil), d.srcs...)
}

func (d *loopDialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	d.record(src)
	if d.fail != nil {
		return nil, d.fail
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.tcp.String())
}

func (d *loopDialer) DialUDP(src, dst netip.AddrPort) (net.Conn, error) {
	d.record(src)
	return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(d.udp))
}

var lo = netip.MustParseAddr("127.0.0.1")

// publishTCP publishes a port on 127.0.0.1 to 172.17.0.2:80 through d;
// the Forwards is closed when the test ends.
func publishTCP(t *testing.T, d Dialer) (*Forwards, Mapping) {
	t.Helper()
	f := NewForwards(d, gw, testLogger(t))
	t.Cleanup(f.Close)
	m, err := f.Add(Mapping{Proto: "tcp", HostIP: lo, Target: netip.MustParseAddrPort("172.17.0.2:80")})
	if err != nil {
		t.Fatal(err)
	}
	return f, m
}

func TestForwardsTCP(t *testing.T) {
	d := &loopDialer{tcp: echoServer(t)}
	_, m := publishTCP(t, d)
	if m.HostPort == 0 {
		t.Fatalf("Add returned HostPort 0")
	}
	for i := range 3 {
		c, err := net.Dial("tcp", netip.AddrPortFrom(lo, m.HostPort).String())
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprint("client ", i)
		c.Write([]byte(msg))
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != "hello "+msg {
			t.Fatalf("client %d read %q, %v", i, got, err)
		}
	}
	// Loopback clients enter the network as the gateway.
	if diff := cmp.Diff(make([]netip.AddrPort, 3), d.sources(), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Fatalf("dial sources (-want +got):\n%s", diff)
	}
}

// TestForwardsTCPDialFailure: when the target cannot be reached the client
// is reset rather than accepted and closed cleanly.
func TestForwardsTCPDialFailure(t *testing.T) {
	d := &loopDialer{fail: errors.New("connection refused (test)")}
	_, m := publishTCP(t, d)
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, m.HostPort).String())
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadAll(c)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client: %v, want connection reset", err)
	}
}

func TestForwardsUDP(t *testing.T) {
	checkGoroutines(t)
	d := &loopDialer{udp: udpEchoServer(t)}
	f := NewForwards(d, gw, testLogger(t))
	defer f.Close()
	m, err := f.Add(Mapping{Proto: "udp", HostIP: lo, Target: netip.MustParseAddrPort("172.17.0.2:53")})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		c, err := net.Dial("udp", netip.AddrPortFrom(lo, m.HostPort).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for j := range 2 {
			msg := fmt.Sprintf("c%d m%d", i, j)
			if got := roundTrip(t, c, msg); got != "echo "+msg {
				t.Fatalf("reply %q, want %q", got, "echo "+msg)
			}
		}
	}
	// One flow (one dial) per client, each from the gateway.
	if got := len(d.sources()); got != 2 {
		t.Fatalf("%d dials for 2 clients, want 2", got)
	}
	if err := f.Remove(m); err != nil {
		t.Fatal(err)
	}
	if n := len(f.List()); n != 0 {
		t.Fatalf("List after Remove has %d mappings", n)
	}
	// The port is free again.
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(lo, m.HostPort).String())
	if err != nil {
		t.Fatalf("port not freed by Remove: %v", err)
	}
	pc.Close()
}

// greeter runs a TCP server on 127.0.0.1 that writes "hi" to each client
// and then waits for the client to go.
func greeter(t *testing.T) netip.AddrPort {
	return tcpServer(t, func(c net.Conn) {
		c.Write([]byte("hi"))
		io.Copy(io.Discard, c)
	})
}

func TestForwardsAddRemoveList(t *testing.T) {
	checkGoroutines(t)
	d := &loopDialer{tcp: greeter(t), udp: udpEchoServer(t)}
	f := NewForwards(d, gw, testLogger(t))
	defer f.Close()
	target := netip.MustParseAddrPort("172.17.0.2:80")

	mt, err := f.Add(Mapping{Proto: "tcp", HostIP: lo, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	mu, err := f.Add(Mapping{Proto: "udp", HostIP: lo, HostPort: mt.HostPort, Target: target})
	if err != nil {
		t.Fatalf("udp on the tcp mapping's port number: %v", err)
	}
	if diff := cmp.Diff([]Mapping{mt, mu}, f.List(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Fatalf("List (-want +got):\n%s", diff)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)

	errTests := []struct {
		name    string
		m       Mapping
		wantErr string
		inUse   bool
	}{
		{"same mapping twice", Mapping{Proto: "tcp", HostIP: lo, HostPort: mt.HostPort, Target: target},
			fmt.Sprintf("host port 127.0.0.1:%d/tcp is already in use", mt.HostPort), true},
		{"port held by another program", Mapping{Proto: "tcp", HostIP: lo, HostPort: busyPort, Target: target},
			fmt.Sprintf("host port 127.0.0.1:%d/tcp is already in use", busyPort), true},
		{"all addresses, port held on loopback", Mapping{Proto: "tcp", HostPort: busyPort, Target: target},
			fmt.Sprintf("host port 0.0.0.0:%d/tcp is already in use", busyPort), true},
		{"bad protocol", Mapping{Proto: "sctp", HostIP: lo, HostPort: 1, Target: target},
			`publish 127.0.0.1:1: protocol "sctp" is not tcp or udp`, false},
		{"target without port", Mapping{Proto: "tcp", HostIP: lo, Target: netip.AddrPortFrom(target.Addr(), 0)},
			"publish 127.0.0.1:0/tcp: target 172.17.0.2:0 needs an address and a port", false},
	}
	for _, tc := range errTests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.Add(tc.m)
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("Add(%v) error %v, want %q", tc.m, err, tc.wantErr)
			}
			if errors.Is(err, ErrPortInUse) != tc.inUse {
				t.Fatalf("errors.Is(%v, ErrPortInUse) = %v, want %v", err, !tc.inUse, tc.inUse)
			}
		})
	}
	if n := len(f.List()); n != 2 {
		t.Fatalf("failed Adds changed the list: %d mappings", n)
	}

	// A live connection is closed by Remove. The target greets first, so
	// reading the greeting proves the relay is up.
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, mt.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if err := f.Remove(Mapping{Proto: "tcp", HostIP: lo, HostPort: mt.HostPort}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("live connection not closed by Remove")
		}
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(lo, mt.HostPort).String())
	if err != nil {
		t.Fatalf("port not freed by Remove: %v", err)
	}
	ln.Close()
	if err := f.Remove(mt); err == nil || err.Error() != fmt.Sprintf("host port 127.0.0.1:%d/tcp is not published", mt.HostPort) {
		t.Fatalf("second Remove: %v", err)
	}
	if diff := cmp.Diff([]Mapping{mu}, f.List(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Fatalf("List after Remove (-want +got):\n%s", diff)
	}
}

func dialUDP(t *testing.T, to netip.AddrPort) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", to.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestForwardsTCPKeepAlive: a published port's accepted clients probe
// idle connections as hostKeepAlive says (inherited from the listening
// socket, not set per accept).
func TestForwardsTCPKeepAlive(t *testing.T) {
	d := &loopDialer{tcp: greeter(t)}
	f, m := publishTCP(t, d)
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, m.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err) // the relay is up, so the accepted socket is tracked
	}
	f.mu.Lock()
	var accepted *net.TCPConn
	for _, p := range f.ports {
		p.mu.Lock()
		for conn := range p.conns {
			if tc, ok := conn.(*net.TCPConn); ok && tc.RemoteAddr().String() == c.LocalAddr().String() {
				accepted = tc
			}
		}
		p.mu.Unlock()
	}
	f.mu.Unlock()
	if accepted == nil {
		t.Fatal("the published port tracks no connection from the client")
	}
	checkKeepAlive(t, "accepted client", accepted)
}

// checkKeepAlive fails t unless c probes idle connections as
// hostKeepAlive says.
func checkKeepAlive(t *testing.T, what string, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		for _, o := range []struct {
			name       string
			level, opt int
			want       int
		}{
			{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(hostKeepAlive.Idle / time.Second)},
			{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(hostKeepAlive.Interval / time.Second)},
			{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, hostKeepAlive.Count},
		} {
			if v, err := unix.GetsockoptInt(int(fd), o.level, o.opt); err != nil || v != o.want {
				t.Errorf("%s's %s = %d, %v; want %d", what, o.name, v, err, o.want)
			}
		}
	})
}
