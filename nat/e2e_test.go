package nat

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// These tests run guest traffic through the real gateway and switch to
// servers on the host's loopback.

func (g *guest) dialTCP(t *testing.T, dst netip.AddrPort) (*gonet.TCPConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, g.s, full(dst), ipv4.ProtocolNumber)
}

// TestE2ETCPBulkAndHalfClose: the guest uploads 100 MB through the NAT to
// a host loopback server (reached at the gateway's address) and
// half-closes; the server sees EOF, then sends 100 MB back on the same
// connection. Both streams must arrive intact (sha256).
func TestE2ETCPBulkAndHalfClose(t *testing.T) {
	for name, translate := range tcpModes {
		t.Run(name, func(t *testing.T) { testTCPBulkAndHalfClose(t, translate) })
	}
}

func testTCPBulkAndHalfClose(t *testing.T, translate bool) {
	size := int64(100 << 20)
	if testing.Short() || raceEnabled {
		// The race detector slows the stacks down about tenfold.
		size = 16 << 20
	}
	// The expected hashes first, so that computing them does not compete
	// for CPU with the transfers being measured.
	want1, _, _ := hashOf(randomStream(1, size))
	want2, _, _ := hashOf(randomStream(2, size))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type upload struct {
		sum [32]byte
		n   int64
		err error
	}
	uploaded := make(chan upload, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			uploaded <- upload{err: err}
			return
		}
		defer c.Close()
		sum, n, err := hashOf(c) // until the guest's half-close
		uploaded <- upload{sum, n, err}
		if err == nil {
			_, err = io.Copy(struct{ io.Writer }{c}, randomStream(2, size))
		}
		if err == nil {
			c.(*net.TCPConn).CloseWrite()
		}
	}()

	n := newTestNetTCP(t, Config{HostLoopback: true}, translate)
	g := n.addGuest(t, guestAddr)
	c, err := g.dialTCP(t, netip.AddrPortFrom(testPrefix.Addr(), uint16(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()

	start := time.Now()
	if _, err := io.Copy(struct{ io.Writer }{c}, randomStream(1, size)); err != nil {
		t.Fatalf("upload: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("guest CloseWrite: %v", err)
	}
	up := <-uploaded
	upTime := time.Since(start)
	if up.err != nil || up.n != size || up.sum != want1 {
		t.Fatalf("host received %d bytes (err %v), hash match %v; want %d intact", up.n, up.err, up.sum == want1, size)
	}

	start = time.Now()
	sum, got, err := hashOf(c)
	downTime := time.Since(start)
	if err != nil || got != size || sum != want2 {
		t.Fatalf("guest received %d bytes (err %v), hash match %v; want %d intact", got, err, sum == want2, size)
	}
	mb := float64(size) / 1e6
	t.Logf("%.0f MB guest->host in %v (%.0f MB/s), host->guest in %v (%.0f MB/s), MTU %d",
		mb, upTime.Round(time.Millisecond), mb/upTime.Seconds(), downTime.Round(time.Millisecond), mb/downTime.Seconds(), testMTU)
	if s := n.out.Stats(); s.TCPRelayed != 1 {
		t.Fatalf("TCPRelayed = %d, want 1", s.TCPRelayed)
	}
	if s := n.gw.Stats(); (s.TCPTranslated == 1) != translate {
		t.Fatalf("gateway translated %d connections; translation on: %v", s.TCPTranslated, translate)
	}
}

// TestE2ETCPRefused: what the host refuses, or the NAT may not forward,
// the guest sees refused (RST), not a connection that dies later.
func TestE2ETCPRefused(t *testing.T) {
	srv := echoServer(t)
	tests := []struct {
		name         string
		hostLoopback bool
		port         uint16
	}{
		{"host port closed", true, closedPort(t)},
		{"HostLoopback off", false, srv.Port()},
	}
	for _, tc := range tests {
		for mode, translate := range tcpModes {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				n := newTestNetTCP(t, Config{HostLoopback: tc.hostLoopback}, translate)
				g := n.addGuest(t, guestAddr)
				c, err := g.dialTCP(t, netip.AddrPortFrom(testPrefix.Addr(), tc.port))
				if err == nil {
					c.Close()
					t.Fatal("guest dial succeeded, want connection refused")
				}
				if !strings.Contains(err.Error(), "connection was refused") {
					t.Fatalf("guest dial: %v, want connection refused", err)
				}
			})
		}
	}
}

// dialGatewayTCP connects a guest of a new test network, whose gateway
// reaches the host's loopback, to srv's port on the gateway's address.
func dialGatewayTCP(t *testing.T, srv netip.AddrPort) *gonet.TCPConn {
	t.Helper()
	return dialGatewayTCPMode(t, srv, false)
}

// dialGatewayTCPMode is dialGatewayTCP with the gateway translating TCP
// when translate is set.
func dialGatewayTCPMode(t *testing.T, srv netip.AddrPort, translate bool) *gonet.TCPConn {
	t.Helper()
	n := newTestNetTCP(t, Config{HostLoopback: true}, translate)
	g := n.addGuest(t, guestAddr)
	c, err := g.dialTCP(t, netip.AddrPortFrom(testPrefix.Addr(), srv.Port()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestE2ETCPGatewayToLoopback: a connection to the gateway's address
// reaches the host's loopback service on the same port.
func TestE2ETCPGatewayToLoopback(t *testing.T) {
	for name, translate := range tcpModes {
		t.Run(name, func(t *testing.T) {
			checkGoroutines(t)
			c := dialGatewayTCPMode(t, echoServer(t), translate)
			c.Write([]byte("from the guest"))
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "hello from the guest" {
				t.Fatalf("guest read %q, %v", got, err)
			}
		})
	}
}

// TestE2ETCPRelayOffGVisorGoroutine: once a guest's connection is
// accepted, gVisor's goroutine for the SYN returns and the relay runs on
// reused workers (HandleTCP), so it is no longer on any stack.
func TestE2ETCPRelayOffGVisorGoroutine(t *testing.T) {
	c := dialGatewayTCP(t, greeter(t))
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err) // the relay is up
	}
	const frame = "stack.(*Gateway).forwardTCP"
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, frame) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a goroutine is still in %s while the connection is relayed:\n%s", frame, stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestE2EUDPQuietFlows: a quiet flow costs little: no copy buffer
// (udpBufs) and one goroutine, for the replies; datagrams from the guest
// are sent as they arrive (sendToHost). With a 64 KiB buffer per copy loop
// each flow held 128 KiB, and with a goroutine per direction two.
func TestE2EUDPQuietFlows(t *testing.T) {
	srv := udpEchoServer(t)
	n := newTestNet(t, Config{HostLoopback: true})
	g := n.addGuest(t, guestAddr)
	dst := full(netip.AddrPortFrom(testPrefix.Addr(), srv.Port()))
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // and once more for what pools kept
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	const flows = 200
	before, goroutines := heap(), runtime.NumGoroutine()
	for i := range flows {
		c, err := gonet.DialUDP(g.s, nil, &dst, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := fmt.Sprint("flow ", i)
		if got := roundTrip(t, c, msg); got != "echo "+msg {
			t.Fatalf("reply %q, want %q", got, "echo "+msg)
		}
	}
	if s := n.out.Stats(); s.UDPLive != flows {
		t.Fatalf("%d live flows, want %d", s.UDPLive, flows)
	}
	var grown uint64
	if after := heap(); after > before {
		grown = after - before
	}
	if per := grown / flows; per > 32<<10 {
		t.Errorf("heap grew %d KiB for %d quiet flows, %d KiB each; want under 32 KiB each", grown>>10, flows, per>>10)
	}
	if more := runtime.NumGoroutine() - goroutines; more > flows/20 {
		t.Errorf("%d more goroutines for %d quiet flows; want none of their own (one reply poller)", more, flows)
	}
	t.Logf("per quiet flow: %d KiB of heap, %.2f goroutines", grown/flows>>10, float64(runtime.NumGoroutine()-goroutines)/flows)
}

// TestE2EUDPManyReplies: a query answered by many datagrams (more than
// the reply poller sends in one turn) gets every one back, in order.
func TestE2EUDPManyReplies(t *testing.T) {
	checkGoroutines(t)
	const replies = 3*replyBurst + 5
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		_, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		for i := range replies {
			pc.WriteToUDPAddrPort([]byte(fmt.Sprint("part ", i)), from)
		}
	}()
	n := newTestNet(t, Config{HostLoopback: true})
	g := n.addGuest(t, guestAddr)
	dst := full(netip.AddrPortFrom(testPrefix.Addr(), pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()))
	c, err := gonet.DialUDP(g.s, nil, &dst, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("tell me everything"))
	buf := make([]byte, 64)
	for i := range replies {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if got, want := string(buf[:k]), fmt.Sprint("part ", i); got != want {
			t.Fatalf("reply %d is %q, want %q", i, got, want)
		}
	}
}

// TestE2EUDP: datagrams to the gateway's address reach a host loopback
// UDP echo server and the replies come back to the guest socket.
func TestE2EUDP(t *testing.T) {
	checkGoroutines(t)
	srv := udpEchoServer(t)
	n := newTestNet(t, Config{HostLoopback: true})
	g := n.addGuest(t, guestAddr)
	dst := full(netip.AddrPortFrom(testPrefix.Addr(), srv.Port()))
	c, err := gonet.DialUDP(g.s, nil, &dst, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, msg := range []string{"first", "second", "third"} {
		if got := roundTrip(t, c, msg); got != "echo "+msg {
			t.Fatalf("reply %q, want %q", got, "echo "+msg)
		}
	}
	if s := n.out.Stats(); s.UDPFlows != 1 || s.UDPLive != 1 {
		t.Fatalf("stats %+v: want one flow", s)
	}
}
