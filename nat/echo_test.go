package nat

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestEchoMarshalParse(t *testing.T) {
	tests := []struct {
		name    string
		typ     uint8
		id, seq uint16
		payload []byte
	}{
		{"request empty", icmpEchoRequest, 1, 2, nil},
		{"reply odd length", icmpEchoReply, 0xbeef, 0xffff, []byte("abc")},
		{"request 56 bytes", icmpEchoRequest, 0x1234, 7, bytes.Repeat([]byte{0xa5}, 56)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := marshalEcho(tc.typ, tc.id, tc.seq, tc.payload)
			if icmpChecksum(b) != 0 {
				t.Fatalf("checksum of %x does not verify", b)
			}
			typ, id, seq, payload, ok := parseEcho(b)
			if !ok {
				t.Fatalf("parseEcho(%x) failed", b)
			}
			got := []any{typ, id, seq, string(payload)}
			want := []any{tc.typ, tc.id, tc.seq, string(tc.payload)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("parseEcho (-want +got):\n%s", diff)
			}
		})
	}
	for _, bad := range [][]byte{nil, {0, 0, 0, 0, 0, 0, 0}, {3, 0, 0, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0, 0, 0, 0}} {
		if _, _, _, _, ok := parseEcho(bad); ok {
			t.Errorf("parseEcho(%x) accepted", bad)
		}
	}
}

// FuzzParseEcho: replies come from the network; parsing must never panic
// and must agree with marshalEcho on what it accepts.
func FuzzParseEcho(f *testing.F) {
	f.Add(marshalEcho(icmpEchoReply, 1, 2, []byte("x")))
	f.Add([]byte{8, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, id, seq, payload, ok := parseEcho(b)
		if !ok {
			return
		}
		again := marshalEcho(typ, id, seq, payload)
		if !bytes.Equal(again[4:], b[4:]) || again[0] != b[0] {
			t.Fatalf("parse/marshal mismatch: %x vs %x", b, again)
		}
	})
}

func TestHandleEchoDropsWhatItMayNotForward(t *testing.T) {
	o := NewOutbound(Config{Gateway: gw, Logger: testLogger(t)})
	defer o.Close()
	for _, dst := range []string{"172.17.0.1", "127.0.0.1", "224.0.0.1", "255.255.255.255", "0.0.0.0", "2001:db8::1"} {
		o.handleEcho(echoRequest{Src: netip.MustParseAddr("172.17.0.2"), Dst: netip.MustParseAddr(dst), ID: 1, Seq: 1,
			reply: func([]byte) { t.Errorf("reply for %s", dst) }})
	}
	if s := o.Stats(); s.EchoDropped != 6 || s.EchoSent != 0 {
		t.Fatalf("stats %+v: want 6 dropped, 0 sent", s)
	}
}

// echoThrough sends, through o's echo forwarder, one request per guest
// (all with the same identifier and sequence, to dst) and checks each
// guest gets back exactly its own payload.
func echoThrough(t *testing.T, o *Outbound, dst netip.Addr) {
	t.Helper()
	type reply struct {
		guest   int
		payload string
	}
	replies := make(chan reply, 10)
	const guests = 2
	for g := range guests {
		r := echoRequest{
			Src: netip.AddrFrom4([4]byte{172, 17, 0, byte(2 + g)}), Dst: dst, ID: 0x1234, Seq: 7,
			Payload: []byte(fmt.Sprintf("payload of guest %d", g)),
			reply:   func(p []byte) { replies <- reply{g, string(p)} },
		}
		if err := o.echo.forward(r); err != nil {
			t.Fatalf("forward: %v", err)
		}
	}
	got := map[int]string{}
	for range guests {
		select {
		case r := <-replies:
			if _, dup := got[r.guest]; dup {
				t.Fatalf("guest %d got two replies", r.guest)
			}
			got[r.guest] = r.payload
		case <-time.After(10 * time.Second):
			t.Fatalf("replies so far %v; want one per guest", got)
		}
	}
	want := map[int]string{0: "payload of guest 0", 1: "payload of guest 1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("replies (-want +got):\n%s", diff)
	}
	if s := o.Stats(); s.EchoReplies != guests {
		t.Fatalf("EchoReplies = %d, want %d", s.EchoReplies, guests)
	}
}

// TestEchoRaw pings the host's 127.0.0.1 through a raw socket, as root.
func TestEchoRaw(t *testing.T) {
	if c, err := openEchoSocket(unix.SOCK_RAW); err != nil {
		t.Skipf("raw ICMP sockets need CAP_NET_RAW: %v", err)
	} else {
		c.Close()
	}
	o := NewOutbound(Config{Gateway: gw, Logger: testLogger(t)})
	defer o.Close()
	o.echo.close()
	o.echo = newEchoForwarder(EchoRaw, func() (net.PacketConn, error) { return openEchoSocket(unix.SOCK_RAW) }, o.cfg.Clock, o)
	echoThrough(t, o, netip.MustParseAddr("127.0.0.1"))
}

// TestEchoPingSocket pings 127.0.0.1 through unprivileged ping sockets in
// a network namespace made for the test, where ping_group_range is opened
// up (the host's "1 0" refuses them even to root). The kernel rewrites
// the identifier; the guests must still get their own replies.
func TestEchoPingSocket(t *testing.T) {
	ns := newTestNetns(t)
	open := func() (c net.PacketConn, err error) {
		err = ns.do(func() error {
			c, err = openEchoSocket(unix.SOCK_DGRAM)
			return err
		})
		return c, err
	}
	o := NewOutbound(Config{Gateway: gw, Logger: testLogger(t)})
	defer o.Close()
	o.echo.close()
	o.echo = newEchoForwarder(EchoPingSocket, open, o.cfg.Clock, o)
	echoThrough(t, o, netip.MustParseAddr("127.0.0.1"))
	// Each guest session got its own socket; expiry closes them.
	o.echo.expire(o.cfg.Clock().Add(echoSessionIdle))
	o.echo.mu.Lock()
	n := len(o.echo.sessions)
	o.echo.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d sessions left after idle expiry", n)
	}
}

// testNetns is a network namespace created for one test, with lo up,
// nsAddr as a second (non-loopback) address on it, and ping sockets
// allowed for every group.
type testNetns struct{ fd int }

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer unix.Close(orig)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Skipf("creating a network namespace needs root: %v", err)
	}
	setup := func() (int, error) {
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0); err != nil {
			unix.Close(fd)
			return -1, err
		}
		if err := loUp(); err != nil {
			unix.Close(fd)
			return -1, err
		}
		return fd, addLoAlias(nsAddr)
	}
	fd, setupErr := setup()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime discards it when the
		// goroutine ends.
		t.Fatalf("return to the original netns: %v", err)
	}
	runtime.UnlockOSThread()
	if setupErr != nil {
		t.Fatalf("set up test netns: %v", setupErr)
	}
	ns := &testNetns{fd: fd}
	t.Cleanup(func() { unix.Close(fd) })
	return ns
}

// do runs fn on a thread inside the namespace. Sockets fn opens stay in it.
func (n *testNetns) do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, err) // thread stays locked and is discarded
	}
	runtime.UnlockOSThread()
	return ferr
}

// nsAddr is the test netns's non-loopback address.
var nsAddr = netip.MustParseAddr("10.99.0.1")

// addLoAlias adds a as lo:1 in the calling thread's netns.
func addLoAlias(a netip.Addr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo:1")
	if err != nil {
		return err
	}
	b := a.As4()
	if err := ifr.SetInet4Addr(b[:]); err != nil {
		return err
	}
	return unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr)
}

// loUp sets the calling thread's netns loopback interface up.
func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// TestEchoModeProbe: NewOutbound picks the first socket kind the host
// allows, ping socket before raw, and logs the mode.
func TestEchoModeProbe(t *testing.T) {
	want := EchoGatewayOnly
	for _, m := range []struct {
		mode string
		typ  int
	}{{EchoRaw, unix.SOCK_RAW}, {EchoPingSocket, unix.SOCK_DGRAM}} {
		if c, err := openEchoSocket(m.typ); err == nil {
			c.Close()
			want = m.mode
		}
	}
	h := &recordHandler{}
	o := NewOutbound(Config{Gateway: gw, Logger: slog.New(h)})
	defer o.Close()
	if got := o.EchoMode(); got != want {
		t.Fatalf("EchoMode() = %q, want %q", got, want)
	}
	wantLog := []map[string]any{{"msg": "nat: ICMP echo forwarding", "mode": want}}
	if diff := cmp.Diff(wantLog, h.records); diff != "" {
		t.Fatalf("log (-want +got):\n%s", diff)
	}
}
