package nat

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeClock is a Config.Clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testLogger logs through t, so failures come with the package's log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// fakeTCPRequest stands in for *stack.TCPRequest: Accept hands out the
// relay's end of a loopback TCP pair whose other end plays the guest.
type fakeTCPRequest struct {
	relayEnd *net.TCPConn
	accepted chan struct{}
	rejected chan struct{}
}

func newFakeTCPRequest(t *testing.T) (*fakeTCPRequest, *net.TCPConn) {
	guest, relayEnd := tcpPair(t)
	return &fakeTCPRequest{relayEnd: relayEnd, accepted: make(chan struct{}), rejected: make(chan struct{})}, guest
}

func (r *fakeTCPRequest) Accept() (guestConn, error) { close(r.accepted); return r.relayEnd, nil }
func (r *fakeTCPRequest) Reject()                    { close(r.rejected); r.relayEnd.Close() }
func (r *fakeTCPRequest) Translated() bool           { return false }
func (r *fakeTCPRequest) Translate(*net.TCPConn, func()) (io.Closer, error) {
	return nil, errors.New("fakeTCPRequest is not translated")
}

// outcome waits for the request to be accepted or rejected.
func (r *fakeTCPRequest) outcome(t *testing.T) string {
	t.Helper()
	select {
	case <-r.accepted:
		return "accepted"
	case <-r.rejected:
		return "rejected"
	case <-time.After(10 * time.Second):
		t.Fatal("request neither accepted nor rejected")
		return ""
	}
}

// echoServer runs a TCP server on 127.0.0.1 that answers every connection
// with "hello " + what it read until EOF.
func echoServer(t *testing.T) netip.AddrPort {
	return tcpServer(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(append([]byte("hello "), b...))
	})
}

// closedPort returns a loopback port with nothing listening.
func closedPort(t *testing.T) uint16 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return uint16(p)
}

var gw = netip.MustParseAddr("172.17.0.1")

func TestOutboundTCP(t *testing.T) {
	srv := echoServer(t)
	guestSrc := netip.MustParseAddrPort("172.17.0.2:40000")
	tests := []struct {
		name         string
		hostLoopback bool
		dst          netip.AddrPort
		want         string
	}{
		{"gateway to host loopback", true, netip.AddrPortFrom(gw, srv.Port()), "accepted"},
		{"gateway without HostLoopback", false, netip.AddrPortFrom(gw, srv.Port()), "rejected"},
		{"refused dial", true, netip.AddrPortFrom(gw, closedPort(t)), "rejected"},
		{"loopback destination never forwarded", true, srv, "rejected"},
		{"multicast destination", true, netip.MustParseAddrPort("224.0.0.1:80"), "rejected"},
		{"port zero", true, netip.AddrPortFrom(gw, 0), "rejected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOutbound(Config{Gateway: gw, HostLoopback: tc.hostLoopback, Logger: testLogger(t)})
			defer o.Close()
			req, guest := newFakeTCPRequest(t)
			go o.handleTCP(guestSrc, tc.dst, req)
			if got := req.outcome(t); got != tc.want {
				t.Fatalf("request %s, want %s", got, tc.want)
			}
			if tc.want != "accepted" {
				if s := o.Stats(); s.TCPRefused != 1 {
					t.Fatalf("TCPRefused = %d, want 1", s.TCPRefused)
				}
				return
			}
			guest.Write([]byte("guest"))
			guest.CloseWrite()
			got, err := io.ReadAll(guest)
			if err != nil || string(got) != "hello guest" {
				t.Fatalf("guest read %q, %v; want %q", got, err, "hello guest")
			}
		})
	}
}

// TestOutboundBypass: a sandbox's own connect goes to the host address
// the NAT would have dialed, and never to the network itself.
func TestOutboundBypass(t *testing.T) {
	subnet := netip.MustParsePrefix("172.17.0.0/16")
	tests := []struct {
		name         string
		hostLoopback bool
		dst          string
		want         string // "" = stays with the sandbox
	}{
		{"gateway to host loopback", true, "172.17.0.1:80", "127.0.0.1:80"},
		{"gateway without HostLoopback", false, "172.17.0.1:80", ""},
		{"outside address", true, "192.0.2.9:443", "192.0.2.9:443"},
		{"another sandbox", true, "172.17.0.3:80", ""},
		{"subnet broadcast", true, "172.17.255.255:9", ""},
		{"loopback", true, "127.0.0.1:80", ""},
		{"multicast", true, "224.0.0.251:5353", ""},
		{"port zero", true, "192.0.2.9:0", ""},
		{"IPv4-mapped outside address", true, "[::ffff:192.0.2.9]:443", "192.0.2.9:443"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOutbound(Config{Gateway: gw, HostLoopback: tc.hostLoopback, Subnet: subnet, Logger: testLogger(t)})
			defer o.Close()
			target, ok := o.Bypass(netip.MustParseAddrPort(tc.dst))
			got := ""
			if ok {
				got = target.String()
			}
			if got != tc.want {
				t.Fatalf("Bypass(%s) = %q, want %q", tc.dst, got, tc.want)
			}
			if n := o.Stats().Bypassed; (n == 1) != ok {
				t.Errorf("Stats().Bypassed = %d after one Bypass that reported %v", n, ok)
			}
		})
	}
}

// blockingDialer blocks every dial until release is closed and reports
// each dial that started.
type blockingDialer struct {
	started chan string
	release chan struct{}
}

func (d *blockingDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.started <- address
	select {
	case <-d.release:
		return nil, errors.New("test dial refused")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestOutboundInFlightCaps: attempts still dialing are capped per source
// and in total; over the cap the SYN is reset at once.
// TestOutboundHostKeepAlive: host connections probe idle peers as
// hostKeepAlive says, whether the default dialer made them or one of the
// caller's that leaves keepalives off.
func TestOutboundHostKeepAlive(t *testing.T) {
	srv := echoServer(t)
	for _, tc := range []struct {
		name   string
		dialer HostDialer
	}{
		{"default dialer", nil},
		{"caller's dialer", &net.Dialer{KeepAlive: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOutbound(Config{Gateway: gw, Logger: testLogger(t), Dialer: tc.dialer})
			defer o.Close()
			c, err := o.dialHostTCP(srv)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			checkKeepAlive(t, "host connection", c.(*net.TCPConn))
		})
	}
}

func TestOutboundInFlightCaps(t *testing.T) {
	d := &blockingDialer{started: make(chan string, 10), release: make(chan struct{})}
	o := NewOutbound(Config{Gateway: gw, Logger: testLogger(t), Dialer: d, MaxInFlight: 2, MaxInFlightPerSource: 1})
	defer o.Close()
	dst := netip.MustParseAddrPort("192.0.2.10:80")
	src := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

	steps := []struct {
		name    string
		src     netip.AddrPort
		blocked bool // reaches the dialer and waits; otherwise rejected at once
	}{
		{"first from A dials", src("172.17.0.2:1000"), true},
		{"second from A over per-source cap", src("172.17.0.2:1001"), false},
		{"first from B dials", src("172.17.0.3:1000"), true},
		{"C over total cap", src("172.17.0.4:1000"), false},
	}
	var pending []*fakeTCPRequest
	for _, st := range steps {
		req, _ := newFakeTCPRequest(t)
		go o.handleTCP(st.src, dst, req)
		if st.blocked {
			select {
			case <-d.started:
			case <-req.rejected:
				t.Fatalf("%s: rejected, want dialing", st.name)
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no dial started", st.name)
			}
			pending = append(pending, req)
			continue
		}
		if got := req.outcome(t); got != "rejected" {
			t.Fatalf("%s: %s, want rejected", st.name, got)
		}
	}
	close(d.release)
	for _, req := range pending {
		if got := req.outcome(t); got != "rejected" {
			t.Fatalf("pending request %s after failed dial, want rejected", got)
		}
	}
	s := o.Stats()
	if diff := cmp.Diff([2]uint64{2, 2}, [2]uint64{s.TCPCapped, s.TCPRefused}); diff != "" {
		t.Fatalf("[capped refused] (-want +got):\n%s", diff)
	}
	// Slots are released: A may dial again.
	req, _ := newFakeTCPRequest(t)
	go o.handleTCP(src("172.17.0.2:1002"), dst, req)
	select {
	case <-d.started:
	case <-time.After(10 * time.Second):
		t.Fatal("A could not dial after its slot was released")
	}
	req.outcome(t)
}

// udpPair returns two loopback UDP sockets connected to each other.
func udpPair(t *testing.T) (a, b *net.UDPConn) {
	t.Helper()
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b, err = net.DialUDP("udp", nil, a.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a, err = net.DialUDP("udp", a.LocalAddr().(*net.UDPAddr), b.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// fakeUDPRequest stands in for *stack.UDPRequest.
type fakeUDPRequest struct{ conn net.Conn }

func (r fakeUDPRequest) Accept() (net.Conn, error) { return r.conn, nil }

// udpEchoServer answers every datagram with "echo " + the datagram.
func udpEchoServer(t *testing.T) netip.AddrPort {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func roundTrip(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read reply to %q: %v", msg, err)
	}
	return string(buf[:n])
}

// TestOutboundUDP: a flow to the gateway reaches the host's loopback echo
// server, lives while replied, and its sockets are closed when it expires
// on the injected clock.
func TestOutboundUDP(t *testing.T) {
	checkGoroutines(t)
	srv := udpEchoServer(t)
	clk := newFakeClock()
	o := NewOutbound(Config{Gateway: gw, HostLoopback: true, Logger: testLogger(t), Clock: clk.Now})
	defer o.Close()
	guest, relayEnd := udpPair(t)
	o.handleUDP(netip.MustParseAddrPort("172.17.0.2:5000"), netip.AddrPortFrom(gw, srv.Port()), fakeUDPRequest{relayEnd})
	for _, msg := range []string{"one", "two"} {
		if got := roundTrip(t, guest, msg); got != "echo "+msg {
			t.Fatalf("reply %q, want %q", got, "echo "+msg)
		}
	}
	if s := o.Stats(); s.UDPFlows != 1 || s.UDPLive != 1 {
		t.Fatalf("stats %+v: want one live flow", s)
	}
	// Still talking udpStreamAfter later: a conversation, kept past an
	// answered query's 30 s.
	clk.Advance(udpStreamAfter)
	if got := roundTrip(t, guest, "three"); got != "echo three" {
		t.Fatalf("reply %q, want %q", got, "echo three")
	}
	clk.Advance(udpUnrepliedTimeout + time.Second)
	o.expire()
	if got := o.Stats().UDPLive; got != 1 {
		t.Fatalf("conversation expired after %v idle", udpUnrepliedTimeout+time.Second)
	}
	clk.Advance(udpStreamTimeout)
	o.expire()
	if got := o.Stats().UDPLive; got != 0 {
		t.Fatalf("UDPLive = %d after %v idle, want 0", got, udpStreamTimeout+udpUnrepliedTimeout)
	}
	// The relay's end is closed: reading it fails instead of blocking.
	relayEnd.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := relayEnd.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("expired flow's guest conn read: %v, want net.ErrClosed", err)
	}
}

// TestOutboundUDPCap: over MaxUDPFlows, a new flow takes the place of an
// answered query's, is dropped and counted when every flow is a
// conversation, and the destination rules apply as for TCP.
func TestOutboundUDPCap(t *testing.T) {
	srv := udpEchoServer(t)
	clk := newFakeClock()
	o := NewOutbound(Config{Gateway: gw, HostLoopback: true, Logger: testLogger(t), MaxUDPFlows: 1, Clock: clk.Now})
	defer o.Close()
	dst := netip.AddrPortFrom(gw, srv.Port())
	query, r1 := udpPair(t)
	o.handleUDP(netip.MustParseAddrPort("172.17.0.2:5000"), dst, fakeUDPRequest{r1})
	if got := roundTrip(t, query, "a"); got != "echo a" {
		t.Fatalf("first flow reply %q", got)
	}

	// The answered query makes room for the next flow.
	conv, r2 := udpPair(t)
	o.handleUDP(netip.MustParseAddrPort("172.17.0.2:5001"), dst, fakeUDPRequest{r2})
	r1.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r1.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("dropped flow's guest conn read: %v, want net.ErrClosed", err)
	}
	if got := roundTrip(t, conv, "b"); got != "echo b" {
		t.Fatalf("second flow reply %q", got)
	}
	clk.Advance(udpStreamAfter)
	if got := roundTrip(t, conv, "b again"); got != "echo b again" {
		t.Fatalf("second flow reply %q", got)
	}

	// A conversation is not dropped for a newcomer.
	_, r3 := udpPair(t)
	o.handleUDP(netip.MustParseAddrPort("172.17.0.2:5002"), dst, fakeUDPRequest{r3})
	if got := roundTrip(t, conv, "b still"); got != "echo b still" {
		t.Fatalf("conversation reply %q after a newcomer", got)
	}
	_, r4 := udpPair(t)
	o.handleUDP(netip.MustParseAddrPort("172.17.0.2:5003"), srv, fakeUDPRequest{r4}) // loopback: never
	s := o.Stats()
	if diff := cmp.Diff([3]uint64{2, 1, 2}, [3]uint64{s.UDPFlows, s.UDPLive, s.UDPDropped}); diff != "" {
		t.Fatalf("[flows live dropped] (-want +got):\n%s", diff)
	}
}

// TestOutboundCloseEndsRelays: Close tears down live TCP relays and UDP
// flows and returns.
func TestOutboundCloseEndsRelays(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn // kept open until the listener goes
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	o := NewOutbound(Config{Gateway: gw, HostLoopback: true, Logger: testLogger(t)})
	req, guest := newFakeTCPRequest(t)
	handled := make(chan struct{})
	go func() {
		o.handleTCP(netip.MustParseAddrPort("172.17.0.2:1"), netip.AddrPortFrom(gw, uint16(ln.Addr().(*net.TCPAddr).Port)), req)
		close(handled)
	}()
	if got := req.outcome(t); got != "accepted" {
		t.Fatalf("request %s", got)
	}
	o.Close()
	<-handled
	guest.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(guest); err != nil {
		t.Fatalf("guest after Close: %v, want EOF", err)
	}
}
