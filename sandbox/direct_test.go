package sandbox

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/sandbox/sandboxtest"
	vswitch "github.com/usernet/usernet/switch"
)

// peerServer, run inside the sandbox, accepts connections on port 8080 and
// writes each client's address as the service sees it.
const peerServer = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen()
print("listening", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(("%s:%d\n" % peer).encode())
    c.close()
`

// TestDirectSockets: sockets from DirectSockets, bound to an address the
// sandbox does not have and connected to the sandbox's own, reach its
// service, which sees that address; its replies come back although the
// sandbox routes that address out of eth0, where nothing answers (no one
// reads the TAP in this test).
func TestDirectSockets(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	sandboxtest.RequireTUN(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("needs python3 for a server inside the sandbox")
	}
	outR, outW := pipe(t)
	s := start(t, Spec{
		Args:   []string{python, "-c", peerServer},
		Stdout: outW,
		Stderr: outW,
		Net:    NetBridge,
		Iface:  &Iface{Name: "eth0", MAC: vswitch.MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}, Addr: netip.MustParsePrefix("172.17.0.2/16"), Gateway: netip.MustParseAddr("172.17.0.1")},
	})
	outW.Close()
	defer s.TAP().Close()
	defer s.Kill()
	if line, err := bufio.NewReader(outR).ReadString('\n'); line != "listening\n" {
		t.Fatalf("server inside: %q, %v", line, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	socks, err := s.DirectSockets(ctx, 3)
	if err != nil {
		t.Fatalf("DirectSockets: %v", err)
	}
	defer closeFiles(socks)
	if len(socks) != 3 {
		t.Fatalf("DirectSockets gave %d sockets, want 3", len(socks))
	}
	// The options the daemon relies on and does not set itself.
	for _, o := range []struct {
		level, opt int
		name       string
	}{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR"},
		{unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT"},
	} {
		if v, err := unix.GetsockoptInt(int(socks[0].Fd()), o.level, o.opt); v != 1 || err != nil {
			t.Errorf("%s = %d (%v), want 1", o.name, v, err)
		}
	}
	// Non-blocking: the daemon's relay waits for them on its poller.
	if fl, err := unix.FcntlInt(socks[0].Fd(), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("direct socket flags = %#o (%v), want O_NONBLOCK", fl, err)
	}
	for i, from := range []string{"192.0.2.7:4242", "172.17.0.1:40000", "172.17.0.1:40001"} {
		if got := connectFrom(t, socks[i], netip.MustParseAddrPort(from), netip.MustParseAddrPort("172.17.0.2:8080")); got != from {
			t.Errorf("the service saw %q, want %s", got, from)
		}
	}

	// A port nothing listens on refuses at once: the kernel's RST must
	// loop back like the service's replies (fwmark_reflect).
	refused, err := s.DirectSockets(ctx, 1)
	if err != nil {
		t.Fatalf("DirectSockets: %v", err)
	}
	defer closeFiles(refused)
	fd := int(refused[0].Fd())
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 7}, Port: 4243}); err != nil {
		t.Fatal(err)
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{172, 17, 0, 2}, Port: 8081})
	if err == unix.EINPROGRESS {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, perr := unix.Poll(pfd, 10_000); n != 1 || perr != nil {
			t.Fatalf("connect to a closed port: no answer within 10s (%v): the RST does not find the socket", perr)
		}
		var v int
		if v, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
			err = unix.Errno(v)
		}
	}
	if err != unix.ECONNREFUSED {
		t.Errorf("connect to a closed port in the sandbox = %v, want ECONNREFUSED", err)
	}

	// Counts outside 1..32 are refused.
	for _, n := range []int{0, maxDirectBatch + 1} {
		if _, err := s.DirectSockets(ctx, n); err == nil || !strings.Contains(err.Error(), "want 1 to 32") {
			t.Errorf("DirectSockets(%d) = %v, want an error naming the range", n, err)
		}
	}
}

// connectFrom binds f to from, connects it to to (both inside the
// sandbox's namespace) and returns the line the service sends.
func connectFrom(t *testing.T, f *os.File, from, to netip.AddrPort) string {
	t.Helper()
	fd := int(f.Fd())
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: from.Addr().As4(), Port: int(from.Port())}); err != nil {
		t.Fatalf("bind %s: %v", from, err)
	}
	err := unix.Connect(fd, &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())})
	if err != nil && err != unix.EINPROGRESS {
		t.Fatalf("connect %s from %s: %v", to, from, err)
	}
	// Reply routing that failed would leave the handshake unfinished
	// (the SYN-ACK leaves through eth0): wait for the line, bounded.
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 10_000); n != 1 || err != nil {
		t.Fatalf("from %s: no answer from the service within 10s (%v): replies do not find the socket", from, err)
	}
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read from %s: %v", from, err)
	}
	return strings.TrimSpace(string(buf[:n]))
}

func TestDirectSocketsHostNetwork(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	stdinR, stdinW := pipe(t)
	s := start(t, Spec{Args: []string{"/bin/sh", "-c", "cat >/dev/null"}, Stdin: stdinR, Net: NetHost})
	stdinR.Close()
	defer stdinW.Close()
	if _, err := s.DirectSockets(context.Background(), 1); err == nil || !strings.Contains(err.Error(), "host's network") {
		t.Errorf("DirectSockets with the host's network = %v, want an error saying so", err)
	}
}

// TestCheckDirectSocket: what the daemon accepts from the agent.
func TestCheckDirectSocket(t *testing.T) {
	plain, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, w := pipe(t)
	defer w.Close()
	tests := []struct {
		name string
		f    *os.File
		want string
	}{
		{"unmarked TCP socket", os.NewFile(uintptr(plain), "plain"), "mark 0"},
		{"UDP socket", os.NewFile(uintptr(udp), "udp"), "type 2"},
		{"pipe", r, "not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.f.Close()
			if err := checkDirectSocket(tt.f); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("checkDirectSocket = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
