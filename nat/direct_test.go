package nat

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Direct published ports are tested on the host's loopback, where every
// 127/8 address is local: plain sockets stand in for the sandbox's
// transparent ones, and a 127/8 "gateway" address can be bound without
// IP_TRANSPARENT. The sandbox's half (making the sockets, the routing
// that brings replies back) is tested in the sandbox package and end to
// end in e2e.

// peerEcho serves TCP on loopback: to each client it writes the client's
// address as it sees it and a newline, then echoes until EOF.
func peerEcho(t testing.TB) netip.AddrPort {
	return tcpServer(t, func(c net.Conn) {
		c.Write([]byte(c.RemoteAddr().String() + "\n"))
		io.Copy(c, c)
	})
}

// plainSockets is a SocketSource of IPv4 TCP sockets with the options the
// agent sets that need no privilege (SO_REUSEADDR,
// IP_BIND_ADDRESS_NO_PORT); it remembers what it gave out, and fail makes
// it fail instead.
type plainSockets struct {
	fail error

	mu    sync.Mutex
	calls int
	files []*os.File
}

func (s *plainSockets) get(ctx context.Context, n int) ([]*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fail != nil {
		return nil, s.fail
	}
	var out []*os.File
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeAll(out)
			return nil, err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		out = append(out, os.NewFile(uintptr(fd), "plain-socket"))
	}
	s.files = append(s.files, out...)
	return out, nil
}

func (s *plainSockets) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// waitFill waits until addr's pool has asked its source and holds what it
// got (or has given up), so a test's next connection meets a settled pool.
func waitFill(t *testing.T, f *Forwards, addr netip.Addr, src *plainSockets) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		p := f.direct[addr]
		f.mu.Unlock()
		p.mu.Lock()
		settled := !p.filling
		p.mu.Unlock()
		if settled && src.callCount() > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the direct pool never filled")
}

// directRig is a Forwards publishing one TCP port to a target whose
// address has direct sockets from src, with a loopDialer standing in for
// the gateway.
type directRig struct {
	f      *Forwards
	d      *loopDialer
	port   uint16 // the published host port on 127.0.0.1
	remove func() // what Direct returned
}

// newDirectRig publishes target with src lending sockets for its address,
// the gateway at gateway and the stand-in dialing dialTo, and waits for the
// pool's first fill. Everything is closed when the test ends.
func newDirectRig(t *testing.T, target, dialTo netip.AddrPort, gateway string, src *plainSockets) *directRig {
	t.Helper()
	r := &directRig{d: &loopDialer{tcp: dialTo}}
	r.f = NewForwards(r.d, netip.MustParseAddr(gateway), testLogger(t))
	t.Cleanup(r.f.Close)
	r.remove = r.f.Direct(target.Addr(), src.get)
	t.Cleanup(r.remove)
	m, err := r.f.Add(Mapping{Proto: "tcp", HostIP: lo, Target: target})
	if err != nil {
		t.Fatal(err)
	}
	r.port = m.HostPort
	waitFill(t, r.f, target.Addr(), src)
	return r
}

// peerOf connects to the published port and returns the address the
// server saw, with the connection positioned after that line.
func peerOf(t *testing.T, port uint16) (string, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, port).String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		t.Fatalf("read the server's greeting: %v", err)
	}
	return strings.TrimSpace(line), c, r
}

func TestForwardsDirect(t *testing.T) {
	checkGoroutines(t)
	target := peerEcho(t)
	src := &plainSockets{}
	rig := newDirectRig(t, target, target, "127.0.0.3", src)

	// A loopback client enters as the gateway, through a direct socket,
	// and a few MiB pass both ways intact (spliced).
	peer, c, r := peerOf(t, rig.port)
	if !strings.HasPrefix(peer, "127.0.0.3:") {
		t.Errorf("server saw %s, want the gateway 127.0.0.3", peer)
	}
	blob := make([]byte, 4<<20)
	rand.Read(blob)
	go func() {
		c.Write(blob)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(r)
	c.Close()
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("echo: %d bytes, %v; want the %d sent back", len(got), err, len(blob))
	}
	if s := rig.d.sources(); len(s) != 0 {
		t.Errorf("the gateway dialed %v; want no dials while direct sockets are there", s)
	}

	// Once removed, connections go through the gateway again, and every
	// socket the pool held is closed.
	rig.remove()
	peer, c, _ = peerOf(t, rig.port)
	c.Close()
	if !strings.HasPrefix(peer, "127.0.0.1:") || len(rig.d.sources()) != 1 {
		t.Errorf("after remove: server saw %s, gateway dials %v; want one dial through the gateway", peer, rig.d.sources())
	}
	for _, f := range src.files {
		if err := f.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("a pooled socket was still open after remove (Close = %v)", err)
		}
	}
}

// TestForwardsDirectFallback: when direct sockets cannot be had, or cannot
// take the source address, connections still work through the gateway.
func TestForwardsDirectFallback(t *testing.T) {
	tests := []struct {
		name    string
		gateway string
		fail    error
	}{
		{"source fails", "127.0.0.3", errors.New("agent gone (test)")},
		// Without IP_TRANSPARENT a plain socket cannot bind an address
		// the host does not have.
		{"cannot bind", "192.0.2.1", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			target := peerEcho(t)
			r := newDirectRig(t, target, target, tt.gateway, &plainSockets{fail: tt.fail})
			peer, c, _ := peerOf(t, r.port)
			c.Close()
			if !strings.HasPrefix(peer, "127.0.0.1:") || len(r.d.sources()) != 1 {
				t.Errorf("server saw %s, gateway dials %v; want one dial through the gateway", peer, r.d.sources())
			}
		})
	}
}

// TestForwardsDirectRefused: a refused direct connection resets the
// client, as a refused dial through the gateway does; it is not retried
// through the gateway.
func TestForwardsDirectRefused(t *testing.T) {
	checkGoroutines(t)
	target := netip.AddrPortFrom(lo, closedPort(t))
	r := newDirectRig(t, target, peerEcho(t), "127.0.0.3", &plainSockets{})
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, r.port).String())
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadAll(c)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client: %v, want connection reset", err)
	}
	if s := r.d.sources(); len(s) != 0 {
		t.Errorf("the gateway dialed %v after a refused direct connection", s)
	}
}

// TestDialDirectSource: a direct socket carries the exact source address
// and port it is given (a client's own, kept).
func TestDialDirectSource(t *testing.T) {
	// One client address and port, connected at once to two published
	// ports of the same sandbox (two services here): both work.
	targets := []netip.AddrPort{peerEcho(t), peerEcho(t)}
	files, err := (&plainSockets{}).get(context.Background(), len(targets))
	if err != nil {
		t.Fatal(err)
	}
	from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.5"), closedPort(t))
	for i, target := range targets {
		c, err := dialDirect(files[i], from, target, false)
		if err != nil {
			t.Fatalf("to %s: %v", target, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if got := strings.TrimSpace(line); err != nil || got != from.String() {
			t.Errorf("%s saw %q (%v), want %s", target, got, err, from)
		}
		if _, ok := c.(*directConn); !ok {
			t.Errorf("dialDirect returned %T, want *directConn (the relay splices those)", c)
		}
		if got := c.RemoteAddr().String(); got != target.String() {
			t.Errorf("RemoteAddr = %s, want %s", got, target)
		}
		if got := c.LocalAddr().String(); got != from.String() {
			t.Errorf("LocalAddr = %s, want %s", got, from)
		}
	}
}

// TestForwardsDirectReset: a service that resets its connection resets
// the client's too, rather than ending it cleanly (the spliced relay
// passes aborts on like the copying one).
func TestForwardsDirectReset(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("partial answer"))
		io.ReadFull(c, make([]byte, 1))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	target := ln.Addr().(*net.TCPAddr).AddrPort()
	r := newDirectRig(t, target, target, "127.0.0.3", &plainSockets{})
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, r.port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("x"))
	_, err = io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client: %v, want connection reset", err)
	}
	if s := r.d.sources(); len(s) != 0 {
		t.Errorf("the gateway dialed %v; the test meant the direct path", s)
	}
}

// TestDialDirectHoldAck: a direct socket dialed for a client that has
// spoken sends the handshake's last ACK with its first bytes; one dialed
// for a silent client sends it at once (TestForwardsDirectSilentClient
// checks what that is for).
func TestDialDirectHoldAck(t *testing.T) {
	for _, tc := range []struct {
		hold bool
		want uint32 // segments the service's socket received
	}{
		{true, 2},  // SYN, ACK with the bytes
		{false, 3}, // SYN, ACK, the bytes
	} {
		t.Run(fmt.Sprintf("hold=%v", tc.hold), func(t *testing.T) {
			svc, target := listenService(t)
			files, err := (&plainSockets{}).get(context.Background(), 1)
			if err != nil {
				t.Fatal(err)
			}
			from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.5"), 0)
			c, err := dialDirect(files[0], from, target, tc.hold)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello"))
			s := acceptRequest(t, svc, "hello")
			defer s.Close()
			if got := segmentsIn(t, s); got != tc.want {
				t.Errorf("the service's socket received %d segments, want %d", got, tc.want)
			}
		})
	}
}

// listenService listens on loopback for a test's service, until the test
// ends.
func listenService(t *testing.T) (*net.TCPListener, netip.AddrPort) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, ln.Addr().(*net.TCPAddr).AddrPort()
}

// acceptRequest accepts one connection on ln and reads want from it.
func acceptRequest(t *testing.T, ln *net.TCPListener, want string) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != want {
		s.Close()
		t.Fatalf("service read %q, %v; want %q", buf, err, want)
	}
	return s
}

// segmentsIn is how many TCP segments c's socket has received.
func segmentsIn(t *testing.T, c *net.TCPConn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err != nil {
		t.Fatal(err)
	}
	return info.Segs_in
}

// TestHasPending: hasPending tells a connection with unread bytes from one
// without, and says false for what it cannot ask.
func TestHasPending(t *testing.T) {
	c, s := tcpPair(t)
	if hasPending(s) {
		t.Error("hasPending before the peer wrote = true")
	}
	c.Write([]byte("x"))
	deadline := time.Now().Add(10 * time.Second)
	for !hasPending(s) {
		if time.Now().After(deadline) {
			t.Fatal("hasPending never saw the peer's byte")
		}
		time.Sleep(time.Millisecond)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if hasPending(a) {
		t.Error("hasPending(net.Pipe) = true, want false")
	}
}

// TestForwardsDirectHoldsAck: a client that has spoken before its
// connection is forwarded gets a direct socket that holds the handshake's
// last ACK for its request (dialDirect's holdAck).
func TestForwardsDirectHoldsAck(t *testing.T) {
	checkGoroutines(t)
	svc, target := listenService(t)
	r := newDirectRig(t, target, target, "127.0.0.3", &plainSockets{})
	r.f.mu.Lock()
	p := r.f.ports[keyOf(Mapping{Proto: "tcp", HostIP: lo, HostPort: r.port})]
	r.f.mu.Unlock()

	// The published listener's accept is the test's own, so the client's
	// bytes are surely waiting when the forward starts.
	client, c := tcpPair(t)
	client.Write([]byte("hello"))
	deadline := time.Now().Add(10 * time.Second)
	for !hasPending(c) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	p.wg.Add(1)
	go p.forwardTCP(c)

	s := acceptRequest(t, svc, "hello")
	defer s.Close()
	if got := segmentsIn(t, s); got != 2 {
		t.Errorf("the service's socket received %d segments, want 2 (SYN, ACK with the request)", got)
	}
}

// TestForwardsDirectSilentClient: a client that sends nothing (the server
// speaks first: SMTP, MySQL, SSH banners) has its connection reach the
// service at once, not after the delayed-ACK timer that a held handshake
// waits for (up to 200 ms).
func TestForwardsDirectSilentClient(t *testing.T) {
	checkGoroutines(t)
	svc, target := listenService(t)
	r := newDirectRig(t, target, target, "127.0.0.3", &plainSockets{})
	const conclusive = 150 * time.Millisecond
	for try := 0; ; try++ {
		start := time.Now()
		client, err := net.Dial("tcp", netip.AddrPortFrom(lo, r.port).String())
		if err != nil {
			t.Fatal(err)
		}
		svc.SetDeadline(time.Now().Add(10 * time.Second))
		s, err := svc.Accept()
		took := time.Since(start)
		if err != nil {
			client.Close()
			t.Fatal(err)
		}
		s.Write([]byte("220 ready\n"))
		client.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(client).ReadString('\n')
		s.Close()
		client.Close()
		if err != nil || line != "220 ready\n" {
			t.Fatalf("client read %q, %v; want the banner", line, err)
		}
		if took < conclusive {
			break
		}
		if try == 3 {
			t.Fatalf("the service saw the connection %v after the client dialed, four times over; want at once", took)
		}
	}
	if s := r.d.sources(); len(s) != 0 {
		t.Errorf("the gateway dialed %v; the test meant the direct path", s)
	}
}
