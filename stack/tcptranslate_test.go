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

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	vswitch "github.com/usernet/usernet/switch"
)

// translator is a TCPHandler that connects every translated request to
// one host server, as nat does to the real destination: on a goroutine,
// since HandleTCP of a translated request must not block.
type translator struct {
	target net.Addr
	ended  chan struct{} // one per flow that ended
}

func newTranslator(target net.Addr) *translator {
	return &translator{target: target, ended: make(chan struct{}, 64)}
}

func (tr *translator) HandleTCP(r *TCPRequest) {
	if !r.Translated() {
		return // refused: these tests expect every SYN translated
	}
	go func() {
		c, err := net.Dial("tcp", tr.target.String())
		if err != nil {
			r.Reject()
			return
		}
		r.Translate(c.(*net.TCPConn), func() { tr.ended <- struct{}{} })
	}()
}

// hostServer listens on host loopback and runs serve for each connection.
func hostServer(t *testing.T, serve func(c *net.TCPConn)) net.Addr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr()
}

// hostEcho echoes until EOF, then half-closes.
func hostEcho(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// translatedNet is a test network whose gateway translates TCP to a host
// server, with one guest.
func translatedNet(t *testing.T, serve func(*net.TCPConn), offloads bool) (*testNet, *guest, *translator) {
	t.Helper()
	tr := newTranslator(hostServer(t, serve))
	n := newTestNet(t, Config{TCP: tr, TranslateTCP: true})
	return n, n.addGuest(t, guestAddr, guestMAC, offloads), tr
}

// waitEnded waits for a translated flow to end and leave the table.
func waitEnded(ctx context.Context, t *testing.T, n *testNet, tr *translator) {
	t.Helper()
	select {
	case <-tr.ended:
	case <-ctx.Done():
		t.Fatal("translated flow never ended")
	}
	if live := n.gw.Stats().TCPTranslating; live != 0 {
		t.Errorf("%d translated flows left in the table", live)
	}
}

var remoteServer = netip.MustParseAddrPort("192.0.2.10:80")

func TestTCPTranslateEcho(t *testing.T) {
	for _, offloads := range []bool{true, false} {
		name := map[bool]string{true: "vnet guest", false: "plain guest"}[offloads]
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t)
			n, g, tr := translatedNet(t, hostEcho, offloads)
			for _, size := range []int{1, 1000, 4 << 20} {
				data := make([]byte, size)
				rand.Read(data)
				c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				checkEcho(t, c, data)
				c.Close()
				waitEnded(ctx, t, n, tr)
			}
			st := n.gw.Stats()
			if st.TCPTranslated != 3 {
				t.Errorf("TCPTranslated = %d, want 3", st.TCPTranslated)
			}
			if offloads && g.gsoIn.Load() == 0 {
				t.Error("4 MiB to a vnet guest came without a single super-frame")
			}
		})
	}
}

// TestTCPTranslateRoundTrips checks request/response traffic: each answer
// must carry the ACK of its request, so the guest gets no pure ACKs for
// requests the host answers at once.
func TestTCPTranslateRoundTrips(t *testing.T) {
	ctx := testContext(t)
	n, g, tr := translatedNet(t, hostEcho, true)
	c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	const rounds = 200
	buf := make([]byte, 64)
	for i := range rounds {
		msg := bytes.Repeat([]byte{byte(i)}, 64)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(buf, msg) {
			t.Fatalf("round %d: got %x", i, buf[:4])
		}
	}
	if acks := g.pureACKsIn.Load(); acks > rounds/4 {
		t.Errorf("guest got %d pure ACKs in %d round trips; answers should carry them", acks, rounds)
	}
	c.Close()
	waitEnded(ctx, t, n, tr)
}

func TestTCPTranslateRefused(t *testing.T) {
	ctx := testContext(t)
	// A port nobody listens on: dial it once to be sure.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr()
	ln.Close()
	for _, tc := range []struct {
		name string
		h    TCPHandler
	}{
		{"host refuses", newTranslator(closed)},
		{"handler answers nothing", tcpHandlerFunc(func(*TCPRequest) {})},
		{"handler rejects", tcpHandlerFunc(func(r *TCPRequest) { r.Reject() })},
		{"handler accepts", tcpHandlerFunc(func(r *TCPRequest) {
			if _, err := r.Accept(); err == nil {
				t.Error("Accept of a translated request succeeded")
			}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func(d time.Duration) { txAnswerTimeout = d }(txAnswerTimeout)
			txAnswerTimeout = 300 * time.Millisecond
			n := newTestNet(t, Config{TCP: tc.h, TranslateTCP: true})
			g := n.addGuest(t, guestAddr, guestMAC, true)
			c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded, want connection refused")
			}
			if !checkRefused(err) {
				t.Fatalf("dial: %v, want connection refused", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for n.gw.Stats().TCPTranslating != 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if live := n.gw.Stats().TCPTranslating; live != 0 {
				t.Errorf("%d refused flows left in the table", live)
			}
		})
	}
}

// TestTCPTranslateHostSpeaksFirst: the host sends more than the guest's
// window before reading and half-closes; the guest reads to EOF, then
// uploads and closes, and the host, slow to read, must get every byte and
// a clean EOF rather than a reset.
func TestTCPTranslateHostSpeaksFirst(t *testing.T) {
	// A banner smaller than the translator's discard batch, and more than
	// the guest's window.
	for _, size := range []int{6, 3<<20 + 1000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			ctx := testContext(t)
			data := make([]byte, size)
			rand.Read(data)
			upload := []byte("the guest's answer")
			type result struct {
				b   []byte
				err error
			}
			got := make(chan result, 1)
			n, g, tr := translatedNet(t, func(c *net.TCPConn) {
				c.Write(data)
				c.CloseWrite()
				time.Sleep(200 * time.Millisecond)
				b, err := io.ReadAll(c)
				got <- result{b, err}
			}, true)
			c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			// Let the host fill the guest's window before anything is read.
			time.Sleep(100 * time.Millisecond)
			b, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !bytes.Equal(b, data) {
				t.Fatalf("guest got %d bytes, want %d", len(b), len(data))
			}
			c.Write(upload)
			c.Close()
			waitEnded(ctx, t, n, tr)
			r := <-got
			if r.err != nil || !bytes.Equal(r.b, upload) {
				t.Errorf("host read %q, %v; want %q and EOF", r.b, r.err, upload)
			}
		})
	}
}

// TestTCPTranslateSlowHost: the host reads nothing for a while, so the
// guest's bytes back up behind its socket; nothing may be lost.
func TestTCPTranslateSlowHost(t *testing.T) {
	ctx := testContext(t)
	data := make([]byte, 16<<20)
	rand.Read(data)
	got := make(chan []byte, 1)
	n, g, tr := translatedNet(t, func(c *net.TCPConn) {
		c.SetReadBuffer(64 << 10)
		time.Sleep(300 * time.Millisecond)
		b, _ := io.ReadAll(c)
		got <- b
	}, true)
	c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if _, err := c.Write(data); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.Close()
	select {
	case b := <-got:
		if !bytes.Equal(b, data) {
			t.Fatalf("host got %d bytes, want %d", len(b), len(data))
		}
	case <-ctx.Done():
		t.Fatal("host never got the data")
	}
	waitEnded(ctx, t, n, tr)
}

// TestTCPTranslateLoss drops frames on their way to the guest: the
// translator must resend what was lost (go-back-N), in both directions'
// flows, and the bytes still arrive intact.
func TestTCPTranslateLoss(t *testing.T) {
	ctx := testContext(t)
	n, g, tr := translatedNet(t, hostEcho, false)
	var count int
	drop := func(f *vswitch.Frame) bool {
		count++
		return count%37 == 0
	}
	g.dropIn.Store(&drop)
	data := make([]byte, 2<<20)
	rand.Read(data)
	c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	checkEcho(t, c, data)
	c.Close()
	waitEnded(ctx, t, n, tr)
	if n.gw.Stats().TCPResent == 0 {
		t.Error("frames were dropped but nothing was resent")
	}
}

// TestTCPTranslateResets: a host that resets resets the guest, and a
// guest that resets resets the host.
func TestTCPTranslateResets(t *testing.T) {
	ctx := testContext(t)
	t.Run("host resets", func(t *testing.T) {
		n, g, tr := translatedNet(t, func(c *net.TCPConn) {
			b := make([]byte, 5)
			io.ReadFull(c, b)
			c.SetLinger(0)
		}, true)
		c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		c.Write([]byte("hello"))
		_, err = io.ReadAll(c)
		var opErr *net.OpError
		if !errors.As(err, &opErr) || opErr.Err.Error() != (&tcpip.ErrConnectionReset{}).String() {
			t.Fatalf("read: %v, want connection reset", err)
		}
		waitEnded(ctx, t, n, tr)
	})
	t.Run("guest resets", func(t *testing.T) {
		hostErr := make(chan error, 1)
		n, g, tr := translatedNet(t, func(c *net.TCPConn) {
			c.Write([]byte("unread"))
			_, err := io.Copy(io.Discard, c)
			hostErr <- err
		}, true)
		c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		// Closing with unread bytes resets the connection (RFC 2525).
		time.Sleep(50 * time.Millisecond)
		c.Close()
		select {
		case err := <-hostErr:
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("host read: %v, want connection reset", err)
			}
		case <-ctx.Done():
			t.Fatal("host never saw the reset")
		}
		waitEnded(ctx, t, n, tr)
	})
}

// TestTCPTranslateGatewayListener: a port the gateway serves itself stays
// with netstack while its listener is open.
func TestTCPTranslateGatewayListener(t *testing.T) {
	ctx := testContext(t)
	n, g, tr := translatedNet(t, hostEcho, true)
	ln, err := n.gw.ListenTCP(53)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("netstack"))
			c.Close()
		}
	}()
	dst := netip.AddrPortFrom(gwPrefix.Addr(), 53)
	c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(dst), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if b, _ := io.ReadAll(c); string(b) != "netstack" {
		t.Errorf("gateway listener said %q, want %q", b, "netstack")
	}
	c.Close()
	if n.gw.Stats().TCPTranslated != 0 {
		t.Error("a connection to the gateway's listener was translated")
	}
	ln.Close()
	c, err = gonet.DialContextTCP(ctx, g.s, g.fullAddr(dst), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial after the listener closed: %v", err)
	}
	checkEcho(t, c, []byte("now the host's"))
	c.Close()
	waitEnded(ctx, t, n, tr)
}

// TestTCPTranslateGatewayClose: closing the gateway ends live flows and
// tells their owners.
func TestTCPTranslateGatewayClose(t *testing.T) {
	ctx := testContext(t)
	n, g, tr := translatedNet(t, hostEcho, true)
	c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(remoteServer), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	n.gw.Close()
	select {
	case <-tr.ended:
	case <-ctx.Done():
		t.Fatal("flow not ended by Gateway.Close")
	}
}

// TestTCPTranslateHeaders compares the translator's data segment with
// what the checksum and the guest's parser expect, on a raw guest.
func TestTCPTranslateHeaders(t *testing.T) {
	ctx := testContext(t)
	tr := newTranslator(hostServer(t, func(c *net.TCPConn) { c.Write([]byte("hi")); io.Copy(io.Discard, c) }))
	n := newTestNet(t, Config{TCP: tr, TranslateTCP: true})
	g := n.addRaw(t, guestMAC, guestAddr)
	sa := rawHandshake(ctx, t, g)
	data := expectTCP(ctx, t, g, header.TCPFlagAck|header.TCPFlagPsh)
	checkTCPFrame(t, data)
	dt := header.TCP(header.IPv4(data[header.EthernetMinimumSize:]).Payload())
	if string(dt.Payload()) != "hi" || dt.SequenceNumber() != sa.SequenceNumber()+1 {
		t.Errorf("data segment seq %d payload %q, want seq %d payload %q", dt.SequenceNumber(), dt.Payload(), sa.SequenceNumber()+1, "hi")
	}
}

// TestTCPTranslateFinAck checks that a guest's FIN answered by the host's
// close costs the guest one frame: our FIN carries the ACK of its FIN.
func TestTCPTranslateFinAck(t *testing.T) {
	ctx := testContext(t)
	tr := newTranslator(hostServer(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) }))
	n := newTestNet(t, Config{TCP: tr, TranslateTCP: true})
	g := n.addRaw(t, guestMAC, guestAddr)
	sa := rawHandshake(ctx, t, g)
	g.sendTCP(1001, sa.SequenceNumber()+1, header.TCPFlagFin|header.TCPFlagAck)
	d := nextTCP(ctx, t, g)
	got := header.TCP(header.IPv4(d[header.EthernetMinimumSize:]).Payload())
	if got.Flags() != header.TCPFlagFin|header.TCPFlagAck || got.AckNumber() != 1002 {
		t.Fatalf("after the guest's FIN got flags %v ack %d, want FIN|ACK acknowledging 1002", got.Flags(), got.AckNumber())
	}
	g.sendTCP(1002, got.SequenceNumber()+1, header.TCPFlagAck)
	waitEnded(ctx, t, n, tr)
}

// rawHandshake opens a translated connection from the raw guest (port
// 40000, ISN 999) to remoteServer and returns the gateway's SYN-ACK.
func rawHandshake(ctx context.Context, t *testing.T, g *rawGuest) header.TCP {
	t.Helper()
	syn := header.TCP(make([]byte, header.TCPMinimumSize+4))
	syn.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: 1000, DataOffset: header.TCPMinimumSize + 4, Flags: header.TCPFlagSyn, WindowSize: 65535})
	copy(syn[header.TCPMinimumSize:], []byte{header.TCPOptionMSS, 4, 0x05, 0xb4})
	setTCPChecksum(syn, guestAddr, remoteServer.Addr())
	g.send(ipv4Frame(gwMAC, guestMAC, guestAddr, remoteServer.Addr(), header.TCPProtocolNumber, syn))
	synAck := expectTCP(ctx, t, g, header.TCPFlagSyn|header.TCPFlagAck)
	checkTCPFrame(t, synAck)
	sa := header.TCP(header.IPv4(synAck[header.EthernetMinimumSize:]).Payload())
	if sa.AckNumber() != 1001 {
		t.Errorf("SYN-ACK acknowledges %d, want 1001", sa.AckNumber())
	}
	g.sendTCP(1001, sa.SequenceNumber()+1, header.TCPFlagAck)
	return sa
}

// sendTCP sends a segment without payload from the raw guest's
// connection (rawHandshake's ports).
func (g *rawGuest) sendTCP(seq, ack uint32, flags header.TCPFlags) {
	s := header.TCP(make([]byte, header.TCPMinimumSize))
	s.Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: seq, AckNum: ack, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 65535})
	setTCPChecksum(s, guestAddr, remoteServer.Addr())
	g.send(ipv4Frame(gwMAC, guestMAC, guestAddr, remoteServer.Addr(), header.TCPProtocolNumber, s))
}

// expectTCP returns the next TCP frame with exactly flags set that reaches
// the raw guest, skipping others.
func expectTCP(ctx context.Context, t *testing.T, g *rawGuest, flags header.TCPFlags) []byte {
	t.Helper()
	for {
		if d := nextTCP(ctx, t, g); isTCP(d, flags) {
			return d
		}
	}
}

// nextTCP returns the next IPv4 TCP frame that reaches the raw guest, its
// partial checksum completed as the guest's TAP would, answering ARP on
// the way.
func nextTCP(ctx context.Context, t *testing.T, g *rawGuest) []byte {
	t.Helper()
	for {
		h, d, err := g.p.Receive(ctx)
		if err != nil {
			t.Fatalf("waiting for a TCP frame: %v", err)
		}
		if !isTCP(d, 0) {
			g.answerARP(d)
			continue
		}
		f := vswitch.NewFrame(len(d))
		copy(f.Data, d)
		f.Hdr = h
		if err := vswitch.Checksum(f); err != nil {
			t.Fatalf("completing checksum: %v", err)
		}
		return f.Data
	}
}

// setTCPChecksum fills in a TCP segment's checksum.
func setTCPChecksum(t header.TCP, src, dst netip.Addr) {
	t.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, toTCPIP(src), toTCPIP(dst), uint16(len(t)))
	t.SetChecksum(^t.CalculateChecksum(sum))
}

// isTCP reports whether d is an IPv4 TCP frame with exactly flags set
// (any flags when flags is 0).
func isTCP(d []byte, flags header.TCPFlags) bool {
	if len(d) < header.EthernetMinimumSize+header.IPv4MinimumSize || header.Ethernet(d).Type() != header.IPv4ProtocolNumber {
		return false
	}
	ip := header.IPv4(d[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.TCPProtocolNumber {
		return false
	}
	return flags == 0 || header.TCP(ip.Payload()).Flags() == flags
}

// checkTCPFrame checks an IPv4 TCP frame's checksums and addresses as the
// guest would, completing a partial checksum first as its TAP would.
func checkTCPFrame(t *testing.T, d []byte) {
	t.Helper()
	ip := header.IPv4(d[header.EthernetMinimumSize:])
	if !ip.IsChecksumValid() {
		t.Error("bad IPv4 header checksum")
	}
	if ip.SourceAddress() != toTCPIP(remoteServer.Addr()) || ip.DestinationAddress() != toTCPIP(guestAddr) {
		t.Errorf("segment %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), remoteServer.Addr(), guestAddr)
	}
	tcp := header.TCP(ip.Payload())
	if !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksumOf(tcp.Payload()), uint16(len(tcp.Payload()))) {
		t.Error("bad TCP checksum")
	}
}

func checksumOf(b []byte) uint16 {
	return checksum.Checksum(b, 0)
}
