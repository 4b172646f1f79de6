package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	vswitch "github.com/usernet/usernet/switch"
)

var (
	guestMAC  = vswitch.MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}
	guestAddr = netip.MustParseAddr("172.17.0.2")
)

// tcpHandlerFunc adapts a function to TCPHandler.
type tcpHandlerFunc func(*TCPRequest)

func (f tcpHandlerFunc) HandleTCP(r *TCPRequest) { f(r) }

// udpHandlerFunc adapts a function to UDPHandler.
type udpHandlerFunc func(*UDPRequest)

func (f udpHandlerFunc) HandleUDP(r *UDPRequest) { f(r) }

// echoServe answers everything read on c with the same bytes, then
// half-closes, like a relay to an echo server would.
func echoServe(c TCPConn) {
	defer c.Close()
	if _, err := io.Copy(c, c); err != nil {
		return
	}
	c.CloseWrite()
}

func TestTCPForward(t *testing.T) {
	tests := []struct {
		name        string
		dst         netip.AddrPort
		handler     func(*TCPRequest)
		wantRefused bool
	}{
		{
			name: "accepted, remote address",
			dst:  netip.MustParseAddrPort("192.0.2.10:80"),
			handler: func(r *TCPRequest) {
				c, err := r.Accept()
				if err == nil {
					go echoServe(c)
				}
			},
		},
		{
			name: "accepted, gateway address",
			dst:  netip.AddrPortFrom(gwPrefix.Addr(), 8080),
			handler: func(r *TCPRequest) {
				c, err := r.Accept()
				if err == nil {
					go echoServe(c)
				}
			},
		},
		{name: "rejected", dst: netip.MustParseAddrPort("192.0.2.10:81"), handler: func(r *TCPRequest) { r.Reject() }, wantRefused: true},
		{name: "handler answers nothing", dst: netip.MustParseAddrPort("192.0.2.10:82"), handler: func(*TCPRequest) {}, wantRefused: true},
		{name: "no handler", dst: netip.MustParseAddrPort("192.0.2.10:83"), wantRefused: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			seen := make(chan [2]netip.AddrPort, 1)
			var h TCPHandler
			if tt.handler != nil {
				h = tcpHandlerFunc(func(r *TCPRequest) {
					seen <- [2]netip.AddrPort{r.Src, r.Dst}
					tt.handler(r)
				})
			}
			n := newTestNet(t, Config{TCP: h})
			g := n.addGuest(t, guestAddr, guestMAC, true)

			c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(tt.dst), ipv4.ProtocolNumber)
			if tt.wantRefused {
				if err == nil {
					c.Close()
					t.Fatal("dial succeeded, want connection refused")
				}
				if !checkRefused(err) {
					t.Fatalf("dial: %v, want connection refused", err)
				}
			} else {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				msg := []byte("hello through the gateway")
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("write: %v", err)
				}
				if err := c.CloseWrite(); err != nil {
					t.Fatalf("close write: %v", err)
				}
				got, err := io.ReadAll(c)
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if !bytes.Equal(got, msg) {
					t.Errorf("echoed %q, want %q", got, msg)
				}
			}
			if tt.handler == nil {
				return
			}
			select {
			case got := <-seen:
				src := netip.AddrPortFrom(guestAddr, got[0].Port())
				if diff := cmp.Diff([2]netip.AddrPort{src, tt.dst}, got, cmpNet); diff != "" {
					t.Errorf("request Src/Dst (-want +got):\n%s", diff)
				}
			case <-ctx.Done():
				t.Fatal("handler never called")
			}
		})
	}
}

// TestTCPBulk moves data both ways through the switch and checks it
// arrives intact, with a guest that takes offloads (super-frames cross
// whole) and one that does not (the switch segments and checksums).
func TestTCPBulk(t *testing.T) {
	const size = 4 << 20
	for _, offloads := range []bool{true, false} {
		name := map[bool]string{true: "vnet guest", false: "plain guest"}[offloads]
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t)
			data := make([]byte, size)
			rand.Read(data)
			h := tcpHandlerFunc(func(r *TCPRequest) {
				c, err := r.Accept()
				if err != nil {
					return
				}
				go echoServe(c)
			})
			n := newTestNet(t, Config{TCP: h})
			g := n.addGuest(t, guestAddr, guestMAC, offloads)
			c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(netip.MustParseAddrPort("192.0.2.20:5001")), ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			checkEcho(t, c, data)
			if gso := g.gsoIn.Load(); offloads && gso == 0 {
				t.Error("vnet guest received no GSO super-frame from the gateway")
			} else if !offloads && gso != 0 {
				t.Errorf("plain guest received %d GSO super-frames", gso)
			}
		})
	}
}

func TestDialTCP(t *testing.T) {
	tests := []struct {
		name    string
		src     netip.AddrPort
		wantSrc netip.Addr
	}{
		{name: "spoofed client address", src: netip.MustParseAddrPort("198.51.100.9:0"), wantSrc: netip.MustParseAddr("198.51.100.9")},
		{name: "zero address is the gateway", src: netip.AddrPort{}, wantSrc: gwPrefix.Addr()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			n := newTestNet(t, Config{})
			g := n.addGuest(t, guestAddr, guestMAC, true)
			ln, err := gonet.ListenTCP(g.s, g.fullAddr(netip.AddrPortFrom(guestAddr, 8080)), ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("guest listen: %v", err)
			}
			defer ln.Close()
			accepted := make(chan net.Addr, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c.RemoteAddr()
				io.Copy(c, c)
				c.Close()
			}()
			c, err := n.gw.DialTCP(ctx, tt.src, netip.AddrPortFrom(guestAddr, 8080))
			if err != nil {
				t.Fatalf("DialTCP: %v", err)
			}
			defer c.Close()
			var remote net.Addr
			select {
			case remote = <-accepted:
			case <-ctx.Done():
				t.Fatal("guest never accepted")
			}
			gotSrc := netip.MustParseAddrPort(remote.String()).Addr()
			if gotSrc != tt.wantSrc {
				t.Errorf("guest saw client %v, want %v", gotSrc, tt.wantSrc)
			}
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatalf("write: %v", err)
			}
			tc, ok := c.(TCPConn)
			if !ok {
				t.Fatalf("DialTCP returned %T, want a TCPConn", c)
			}
			if err := tc.CloseWrite(); err != nil {
				t.Fatalf("CloseWrite: %v", err)
			}
			if got, err := io.ReadAll(c); err != nil || string(got) != "x" {
				t.Errorf("read %q, %v; want \"x\"", got, err)
			}
		})
	}
}

func TestDialTCPRefused(t *testing.T) {
	ctx := testContext(t)
	n := newTestNet(t, Config{})
	n.addGuest(t, guestAddr, guestMAC, true)
	_, err := n.gw.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(guestAddr, 9))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("DialTCP to a closed guest port: %v, want connection refused", err)
	}
}

func TestUDPForward(t *testing.T) {
	ctx := testContext(t)
	dst := netip.MustParseAddrPort("192.0.2.53:9000")
	type request struct {
		Src, Dst netip.AddrPort
		First    string
	}
	reqs := make(chan request, 1)
	h := udpHandlerFunc(func(r *UDPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			reqs <- request{Src: r.Src, Dst: r.Dst, First: string(buf[:n])}
			c.Write(append([]byte("re:"), buf[:n]...))
		}()
	})
	n := newTestNet(t, Config{UDP: h})
	g := n.addGuest(t, guestAddr, guestMAC, true)
	laddr := g.fullAddr(netip.AddrPortFrom(guestAddr, 4444))
	raddr := g.fullAddr(dst)
	c, err := gonet.DialUDP(g.s, &laddr, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("query")); err != nil {
		t.Fatalf("write: %v", err)
	}
	var got request
	select {
	case got = <-reqs:
	case <-ctx.Done():
		t.Fatal("handler never got the datagram")
	}
	want := request{Src: netip.AddrPortFrom(guestAddr, 4444), Dst: dst, First: "query"}
	if diff := cmp.Diff(want, got, cmpNet); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	buf := make([]byte, 100)
	nr, err := c.Read(buf)
	if err != nil || string(buf[:nr]) != "re:query" {
		t.Errorf("guest read %q, %v; want \"re:query\"", buf[:nr], err)
	}
}

// TestUDPConnOnDatagram: a flow's conn hands OnDatagram's function the
// datagram queued before it and each one after, in order; Close returns
// (the function runs inside it, under netstack's lock, and must not
// deadlock) and ends the calls, and the flow's next datagram is a new
// request rather than lost to the closed conn.
func TestUDPConnOnDatagram(t *testing.T) {
	ctx := testContext(t)
	f := startUDPFlow(t, true, "first")
	c, gc := f.conn, f.guest
	got := make(chan string, 16)
	c.OnDatagram(func(p []byte) { got <- string(p) })
	for i := range 5 {
		gc.Write([]byte(fmt.Sprint("next ", i)))
	}
	for _, want := range []string{"first", "next 0", "next 1", "next 2", "next 3", "next 4"} {
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("got %q, want %q", s, want)
			}
		case <-ctx.Done():
			t.Fatalf("no call for %q", want)
		}
	}
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
	gc.Write([]byte("after"))
	select {
	case c2 := <-f.conns:
		defer c2.Close()
		buf := make([]byte, 16)
		k, ok, err := c2.ReadNow(buf)
		if !ok || err != nil || string(buf[:k]) != "after" {
			t.Errorf("new flow's first datagram: %q, %v, %v; want \"after\"", buf[:k], ok, err)
		}
	case s := <-got:
		t.Fatalf("closed conn's function got %q", s)
	case <-ctx.Done():
		t.Fatal("the datagram after Close made no new flow")
	}
}

// udpFlow is a guest's UDP flow through the gateway (startUDPFlow).
type udpFlow struct {
	net   *testNet
	conn  *UDPConn       // the gateway's, from UDPRequest.Accept
	guest *gonet.UDPConn // the guest's, to udpFlowDst
	conns chan *UDPConn  // later flows' conns
}

// udpFlowDst is where startUDPFlow's guest sends.
var udpFlowDst = netip.MustParseAddrPort("192.0.2.53:9000")

// startUDPFlow starts a guest's UDP flow through the gateway with first as
// its first datagram; offloads picks the guest's kind (addGuest). The
// conns close when the test ends.
func startUDPFlow(t *testing.T, offloads bool, first string) *udpFlow {
	t.Helper()
	ctx := testContext(t)
	conns := make(chan *UDPConn, 4)
	h := udpHandlerFunc(func(r *UDPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		conns <- c.(*UDPConn)
	})
	n := newTestNet(t, Config{UDP: h})
	g := n.addGuest(t, guestAddr, guestMAC, offloads)
	raddr := g.fullAddr(udpFlowDst)
	gc, err := gonet.DialUDP(g.s, nil, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	t.Cleanup(func() { gc.Close() })
	gc.Write([]byte(first))
	select {
	case c := <-conns:
		t.Cleanup(func() { c.Close() })
		return &udpFlow{net: n, conn: c, guest: gc, conns: conns}
	case <-ctx.Done():
		t.Fatal("no flow")
		return nil
	}
}

// udpFlowConns is startUDPFlow's two conns, for a guest with offloads.
func udpFlowConns(t *testing.T, first string) (*UDPConn, *gonet.UDPConn) {
	f := startUDPFlow(t, true, first)
	return f.conn, f.guest
}

// TestUDPConnWriteNow: WriteNow sends a reply to the guest's flow without
// waiting, and fails with net.ErrClosed once the conn is closed.
func TestUDPConnWriteNow(t *testing.T) {
	c, gc := udpFlowConns(t, "query")
	if k, err := c.WriteNow([]byte("reply")); err != nil || k != 5 {
		t.Fatalf("WriteNow = %d, %v; want 5, nil", k, err)
	}
	gc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 16)
	k, err := gc.Read(buf)
	if err != nil || string(buf[:k]) != "reply" {
		t.Fatalf("guest read %q, %v; want reply", buf[:k], err)
	}
	c.Close()
	if _, err := c.WriteNow([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteNow after Close: %v, want net.ErrClosed", err)
	}
}

func TestDialUDP(t *testing.T) {
	ctx := testContext(t)
	n := newTestNet(t, Config{})
	g := n.addGuest(t, guestAddr, guestMAC, true)
	laddr := g.fullAddr(netip.AddrPortFrom(guestAddr, 5353))
	pc, err := gonet.DialUDP(g.s, &laddr, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("guest listen: %v", err)
	}
	defer pc.Close()
	c, err := n.gw.DialUDP(netip.MustParseAddrPort("198.51.100.9:7777"), netip.AddrPortFrom(guestAddr, 5353))
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 10)
	pc.SetReadDeadline(deadline(ctx))
	nr, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("guest read: %v", err)
	}
	if got, want := from.String(), "198.51.100.9:7777"; got != want || string(buf[:nr]) != "hi" {
		t.Errorf("guest got %q from %s, want \"hi\" from %s", buf[:nr], got, want)
	}
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// TestListenUDPTakesPrecedence checks that a service the gateway binds
// (DNS on port 53) gets its datagrams, while the same port on another
// address still goes to the UDPHandler.
func TestListenUDPTakesPrecedence(t *testing.T) {
	ctx := testContext(t)
	handled := make(chan netip.AddrPort, 2)
	h := udpHandlerFunc(func(r *UDPRequest) { handled <- r.Dst })
	n := newTestNet(t, Config{UDP: h})
	pc, err := n.gw.ListenUDP(53)
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	defer pc.Close()
	g := n.addGuest(t, guestAddr, guestMAC, true)
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(gwPrefix.Addr(), 53), netip.MustParseAddrPort("192.0.2.53:53")} {
		laddr := g.fullAddr(netip.AddrPortFrom(guestAddr, 0))
		raddr := g.fullAddr(dst)
		c, err := gonet.DialUDP(g.s, &laddr, &raddr, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("guest dial %v: %v", dst, err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("q")); err != nil {
			t.Fatalf("write to %v: %v", dst, err)
		}
	}
	pc.SetReadDeadline(deadline(ctx))
	buf := make([]byte, 10)
	if _, from, err := pc.ReadFrom(buf); err != nil {
		t.Fatalf("gateway service read: %v", err)
	} else if got := netip.MustParseAddrPort(from.String()).Addr(); got != guestAddr {
		t.Errorf("service got a datagram from %v, want %v", got, guestAddr)
	}
	select {
	case dst := <-handled:
		if want := netip.MustParseAddrPort("192.0.2.53:53"); dst != want {
			t.Errorf("UDPHandler got a flow to %v, want only %v", dst, want)
		}
	case <-ctx.Done():
		t.Fatal("UDPHandler never got the datagram to the remote address")
	}
}
