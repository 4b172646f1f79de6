package stack

import (
	"bytes"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// readFrom reads one datagram on a guest's conn, failing the test after a
// few seconds: a frame with a bad checksum is dropped by a guest without
// offloads, and that must fail here rather than hang.
func readFrom(t *testing.T, c *gonet.UDPConn) (string, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1<<16)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("guest read: %v", err)
	}
	return string(buf[:n]), from.String()
}

// expectDatagrams checks that got yields want, in order.
func expectDatagrams(t *testing.T, got <-chan string, want ...string) {
	t.Helper()
	for _, w := range want {
		select {
		case s := <-got:
			if s != w {
				t.Fatalf("got %.20q (%d bytes), want %.20q (%d bytes)", s, len(s), w, len(w))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no datagram, want %.20q", w)
		}
	}
}

// TestUDPShortcut: once a flow's conn is read with OnDatagram, the guest's
// datagrams after the first and the replies skip netstack, with headers a
// guest that checks every checksum takes; what does not fit one frame
// (fragments either way) still goes through netstack, in order with the
// rest.
func TestUDPShortcut(t *testing.T) {
	for _, offloads := range []bool{false, true} {
		name := map[bool]string{false: "plain guest", true: "guest with offloads"}[offloads]
		t.Run(name, func(t *testing.T) {
			f := startUDPFlow(t, offloads, "first")
			got := make(chan string, 16)
			f.conn.OnDatagram(func(p []byte) { got <- string(p) })
			expectDatagrams(t, got, "first")

			f.guest.Write([]byte("second"))
			expectDatagrams(t, got, "second")
			if s := f.net.gw.Stats(); s.UDPShortcutIn != 1 {
				t.Errorf("UDPShortcutIn = %d after the second datagram, want 1", s.UDPShortcutIn)
			}
			if _, err := f.conn.WriteNow([]byte("reply")); err != nil {
				t.Fatalf("WriteNow: %v", err)
			}
			if p, from := readFrom(t, f.guest); p != "reply" || from != udpFlowDst.String() {
				t.Errorf("guest got %q from %s, want \"reply\" from %s", p, from, udpFlowDst)
			}
			if _, err := f.conn.Write([]byte("write")); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if p, _ := readFrom(t, f.guest); p != "write" {
				t.Errorf("guest got %q, want \"write\"", p)
			}
			if s := f.net.gw.Stats(); s.UDPShortcutOut != 2 {
				t.Errorf("UDPShortcutOut = %d after two replies, want 2", s.UDPShortcutOut)
			}

			big := string(bytes.Repeat([]byte("x"), 3*f.net.gw.MTU()))
			f.guest.Write([]byte("a"))
			f.guest.Write([]byte(big))
			f.guest.Write([]byte("b"))
			expectDatagrams(t, got, "a", big, "b")
			if _, err := f.conn.WriteNow([]byte(big)); err != nil {
				t.Fatalf("WriteNow of %d bytes: %v", len(big), err)
			}
			if p, _ := readFrom(t, f.guest); p != big {
				t.Errorf("guest got %d bytes, want the %d sent", len(p), len(big))
			}
			if s := f.net.gw.Stats(); s.UDPShortcutIn != 3 || s.UDPShortcutOut != 2 {
				t.Errorf("shortcut in/out = %d/%d, want 3/2: fragments go through netstack", s.UDPShortcutIn, s.UDPShortcutOut)
			}
		})
	}
}

// Where dialForeign's conn dials from and to: a published port's client
// and a service on the guest.
var (
	foreignClient  = netip.MustParseAddrPort("198.51.100.9:7777")
	foreignService = netip.AddrPortFrom(guestAddr, 5353)
)

// dialForeign dials the gateway's UDP conn from foreignClient to
// foreignService, as a published port does, and reads it with OnDatagram
// into the channel returned. The conn closes when the test ends.
func dialForeign(t *testing.T, n *testNet) (*UDPConn, <-chan string) {
	t.Helper()
	nc, err := n.gw.DialUDP(foreignClient, foreignService)
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	c := nc.(*UDPConn)
	t.Cleanup(func() { c.Close() })
	got := make(chan string, 4)
	c.OnDatagram(func(p []byte) { got <- string(p) })
	return c, got
}

// TestUDPShortcutDialed: a conn dialed into the network (a published UDP
// port's) sends through netstack until the guest's first answer shows its
// MAC, and past netstack after, from the same foreign source address.
func TestUDPShortcutDialed(t *testing.T) {
	n := newTestNet(t, Config{})
	g := n.addGuest(t, guestAddr, guestMAC, false)
	laddr := g.fullAddr(foreignService)
	pc, err := gonet.DialUDP(g.s, &laddr, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("guest listen: %v", err)
	}
	defer pc.Close()
	c, got := dialForeign(t, n)

	for i, msg := range []string{"hi", "again"} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write: %v", err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("guest read: %v", err)
		}
		if string(buf[:k]) != msg || from.String() != foreignClient.String() {
			t.Fatalf("guest got %q from %s, want %q from %s", buf[:k], from, msg, foreignClient)
		}
		if out := n.gw.Stats().UDPShortcutOut; out != uint64(i) {
			t.Errorf("after datagram %d UDPShortcutOut = %d, want %d", i+1, out, i)
		}
		pc.WriteTo([]byte("re:"+msg), from)
		expectDatagrams(t, got, "re:"+msg)
	}
	if in := n.gw.Stats().UDPShortcutIn; in != 2 {
		t.Errorf("UDPShortcutIn = %d, want 2", in)
	}
}

// TestUDPShortcutHeaders: a datagram that skips netstack leaves with the
// headers netstack gave the one before it (all but the IP ID and the
// checksums that cover it), and checksums that verify.
func TestUDPShortcutHeaders(t *testing.T) {
	ctx := testContext(t)
	n := newTestNet(t, Config{})
	rg := n.addRaw(t, guestMAC, guestAddr)
	c, got := dialForeign(t, n)

	isUDP := func(d []byte) bool {
		return len(d) > header.EthernetMinimumSize && header.Ethernet(d).Type() == header.IPv4ProtocolNumber &&
			header.IPv4(d[header.EthernetMinimumSize:]).TransportProtocol() == header.UDPProtocolNumber
	}
	c.Write([]byte("one"))
	viaNetstack := rg.expect(ctx, "the first datagram", isUDP)

	reply := make([]byte, header.UDPMinimumSize+len("re:one"))
	u := header.UDP(reply)
	u.Encode(&header.UDPFields{SrcPort: foreignService.Port(), DstPort: foreignClient.Port(), Length: uint16(len(reply))})
	copy(reply[header.UDPMinimumSize:], "re:one")
	rg.send(ipv4Frame(n.gw.MAC(), guestMAC, guestAddr, foreignClient.Addr(), header.UDPProtocolNumber, reply))
	expectDatagrams(t, got, "re:one")

	c.Write([]byte("two"))
	shortcut := rg.expect(ctx, "the second datagram", isUDP)
	if out := n.gw.Stats().UDPShortcutOut; out != 1 {
		t.Fatalf("UDPShortcutOut = %d, want 1: the second datagram should skip netstack", out)
	}

	for _, d := range [][]byte{viaNetstack, shortcut} {
		ip := header.IPv4(d[header.EthernetMinimumSize:])
		if !ip.IsChecksumValid() {
			t.Errorf("IPv4 header checksum of %x does not verify", d)
		}
		u := header.UDP(ip.Payload())
		if !u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0)) {
			t.Errorf("UDP checksum of %x does not verify", d)
		}
	}
	// Blank what may differ: the IP ID and the checksums, and the payload.
	blank := func(d []byte) []byte {
		d = bytes.Clone(d)
		ip := header.IPv4(d[header.EthernetMinimumSize:])
		ip.SetID(0)
		ip.SetChecksum(0)
		u := header.UDP(ip.Payload())
		u.SetChecksum(0)
		clear(u.Payload())
		return d
	}
	if a, b := blank(viaNetstack), blank(shortcut); !bytes.Equal(a, b) {
		t.Errorf("headers differ:\nnetstack %x\nshortcut %x", a, b)
	}
}

// TestUDPShortcutClose: closing a conn while its flow is busy, or before
// OnDatagram, leaves no entry behind, so the flow's next datagram is a
// new request instead of going to a closed conn.
func TestUDPShortcutClose(t *testing.T) {
	f := startUDPFlow(t, true, "first")
	var calls atomic.Int64
	f.conn.OnDatagram(func([]byte) { calls.Add(1) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 500 {
			f.guest.Write([]byte("busy"))
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); calls.Load() < 10; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d datagrams reached the conn in 5s, want 10 before closing it", calls.Load())
		}
	}
	f.conn.Close()
	<-done
	if n := f.net.gw.udp.len(); n != 0 {
		t.Errorf("%d shortcut entries after Close, want 0", n)
	}

	// A conn closed before OnDatagram never registers.
	f.guest.Write([]byte("again"))
	var c *UDPConn
	select {
	case c = <-f.conns:
	case <-time.After(5 * time.Second):
		t.Fatal("the datagram after Close made no new flow")
	}
	c.Close()
	c.OnDatagram(func([]byte) { t.Error("a closed conn's function ran") })
	if n := f.net.gw.udp.len(); n != 0 {
		t.Errorf("%d shortcut entries after OnDatagram on a closed conn, want 0", n)
	}
}
