package nat

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	vswitch "github.com/usernet/usernet/switch"
)

// guestService listens on the guest at port and, for each connection,
// reports its remote address, then answers "guest saw " + what it read
// until EOF.
func guestService(t testing.TB, g *guest, port uint16) <-chan netip.AddrPort {
	t.Helper()
	ln, err := gonet.ListenTCP(g.s, full(netip.AddrPortFrom(g.addr, port)), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	remotes := make(chan netip.AddrPort, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			remotes <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(append([]byte("guest saw "), b...))
			}()
		}
	}()
	return remotes
}

// exchange sends msg on c, half-closes and returns the whole answer.
func exchange(t testing.TB, c net.Conn, msg string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return string(b)
}

// TestE2EPublishedTCPLoopbackClient: a host client on loopback reaches
// the guest through a published port, and the guest sees the gateway as
// the client.
func TestE2EPublishedTCPLoopbackClient(t *testing.T) {
	checkGoroutines(t)
	n := newTestNet(t, Config{})
	g := n.addGuest(t, guestAddr)
	remotes := guestService(t, g, 80)
	f := NewForwards(n.gw, n.gw.Addr(), testLogger(t))
	defer f.Close()
	m, err := f.Add(Mapping{Proto: "tcp", HostIP: lo, Target: netip.AddrPortFrom(guestAddr, 80)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, m.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := exchange(t, c, "hi"); got != "guest saw hi" {
		t.Fatalf("answer %q", got)
	}
	if got := (<-remotes).Addr(); got != n.gw.Addr() {
		t.Fatalf("guest saw client %v, want the gateway %v", got, n.gw.Addr())
	}
}

// TestE2EPublishedTCPSourceKept: a client with a non-loopback address
// keeps it. The listener and client live in a network namespace made for
// the test (root only), where 10.99.0.1 is a local, non-loopback address.
func TestE2EPublishedTCPSourceKept(t *testing.T) {
	ns := newTestNetns(t)
	n := newTestNet(t, Config{})
	g := n.addGuest(t, guestAddr)
	remotes := guestService(t, g, 80)
	f := NewForwards(n.gw, n.gw.Addr(), testLogger(t))
	defer f.Close()
	var m Mapping
	if err := ns.do(func() (err error) {
		m, err = f.Add(Mapping{Proto: "tcp", HostIP: nsAddr, Target: netip.AddrPortFrom(guestAddr, 80)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	if err := ns.do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: nsAddr.AsSlice()}}
		c, err = d.Dial("tcp", netip.AddrPortFrom(nsAddr, m.HostPort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := exchange(t, c, "hi"); got != "guest saw hi" {
		t.Fatalf("answer %q", got)
	}
	want := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if got := <-remotes; got != want {
		t.Fatalf("guest saw client %v, want %v", got, want)
	}
}

// TestE2EPublishedUDP: datagrams to a published UDP port reach a guest
// socket, and its answers come back to the right client.
func TestE2EPublishedUDP(t *testing.T) {
	checkGoroutines(t)
	n := newTestNet(t, Config{})
	g := n.addGuest(t, guestAddr)
	laddr := full(netip.AddrPortFrom(guestAddr, 5353))
	pc, err := gonet.DialUDP(g.s, &laddr, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("guest: "), buf[:k]...), from)
		}
	}()
	f := NewForwards(n.gw, n.gw.Addr(), testLogger(t))
	defer f.Close()
	m, err := f.Add(Mapping{Proto: "udp", HostIP: lo, Target: netip.AddrPortFrom(guestAddr, 5353)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		c, err := net.Dial("udp", netip.AddrPortFrom(lo, m.HostPort).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, msg := range []string{"a", "b"} {
			msg := msg + string(rune('0'+i))
			if got := roundTrip(t, c, msg); got != "guest: "+msg {
				t.Fatalf("client %d: reply %q, want %q", i, got, "guest: "+msg)
			}
		}
	}
}

// TestE2EEcho: a guest's ping to an outside address (10.99.0.1 in a test
// network namespace, root only) is answered by that host for real, and the
// reply carries the guest's own identifier and sequence. Both socket
// kinds are tried.
func TestE2EEcho(t *testing.T) {
	ns := newTestNetns(t)
	for _, tc := range []struct {
		mode string
		typ  int
	}{{EchoRaw, unix.SOCK_RAW}, {EchoPingSocket, unix.SOCK_DGRAM}} {
		t.Run(tc.mode, func(t *testing.T) {
			n := newTestNet(t, Config{})
			o := n.out
			o.echo.close()
			o.echo = newEchoForwarder(tc.mode, func() (c net.PacketConn, err error) {
				err = ns.do(func() error {
					c, err = openEchoSocket(tc.typ)
					return err
				})
				return c, err
			}, o.cfg.Clock, o)

			a, b := vswitch.NewPipe(false)
			if _, err := n.sw.Attach(a, vswitch.PortConfig{Name: "pinger"}); err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			src := netip.MustParseAddr("172.17.0.3")
			mac := vswitch.MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x03}
			for seq := uint16(1); seq <= 3; seq++ {
				payload := []byte("ping payload")
				if err := b.Send(vswitch.VnetHdr{}, echoFrame(mac, n.gw.MAC(), src, nsAddr, 0x1234, seq, payload)); err != nil {
					t.Fatal(err)
				}
				got := awaitEchoReply(t, b, src)
				want := echoSeen{From: nsAddr, ID: 0x1234, Seq: seq, Payload: string(payload)}
				if diff := cmp.Diff(want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
					t.Fatalf("echo reply (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// echoFrame builds an Ethernet frame carrying an ICMPv4 echo request.
func echoFrame(src, dst vswitch.MAC, srcIP, dstIP netip.Addr, id, seq uint16, payload []byte) []byte {
	icmp := marshalEcho(icmpEchoRequest, id, seq, payload)
	b := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+len(icmp))
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	b[12], b[13] = 0x08, 0x00
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + len(icmp)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpipAddr(srcIP),
		DstAddr:     tcpipAddr(dstIP),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(ip[header.IPv4MinimumSize:], icmp)
	return b
}

type echoSeen struct {
	From    netip.Addr
	ID, Seq uint16
	Payload string
}

// awaitEchoReply reads frames from the pipe until an ICMP echo reply to
// dst arrives.
func awaitEchoReply(t *testing.T, b *vswitch.PipePort, dst netip.Addr) echoSeen {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, f, err := b.Receive(ctx)
		if err != nil {
			t.Fatalf("no echo reply: %v", err)
		}
		if len(f) < header.EthernetMinimumSize+header.IPv4MinimumSize || f[12] != 0x08 || f[13] != 0x00 {
			continue
		}
		ip := header.IPv4(f[header.EthernetMinimumSize:])
		if !ip.IsValid(len(ip)) || ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || ip.DestinationAddress() != tcpipAddr(dst) {
			continue
		}
		if icmpChecksum(ip.Payload()) != 0 {
			t.Fatalf("echo reply with a bad ICMP checksum")
		}
		typ, id, seq, payload, ok := parseEcho(ip.Payload())
		if !ok || typ != icmpEchoReply {
			continue
		}
		from := netip.AddrFrom4(ip.SourceAddress().As4())
		return echoSeen{From: from, ID: id, Seq: seq, Payload: string(payload)}
	}
}
