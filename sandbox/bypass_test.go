package sandbox

import (
	"bufio"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/sandbox/sandboxtest"
	vswitch "github.com/usernet/usernet/switch"
)

// bypassClient runs inside the sandbox. Its argv: the TCP port, the UDP
// port, a closed TCP port and the port of a listener whose queue is full,
// on the gateway's address, which only bypass
// can reach: nobody reads the sandbox's TAP in this test. It prints one
// "name result" line per case.
const bypassClient = `
import errno, os, select, socket, struct, subprocess, sys, time
gw = "10.0.2.2"
tcp, udp, closed, full = (int(a) for a in sys.argv[1:5])

def out(name, value):
    print(name, value, flush=True)

def talk(s, msg):
    s.sendall(msg)
    return s.recv(100).decode()

# A blocking connect; the socket keeps its close-on-exec flag.
s = socket.create_connection((gw, tcp), timeout=10)
out("blocking", talk(s, b"one"))
out("sockname", s.getsockname()[0])
out("peername", "%s:%d" % s.getpeername())
out("inheritable", os.get_inheritable(s.fileno()))
s.close()

# An inheritable fd stays inheritable, and socket options set before the
# connect survive it.
s = socket.socket()
os.set_inheritable(s.fileno(), True)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(10)
s.connect((gw, tcp))
out("inheritable2", os.get_inheritable(s.fileno()))
out("nodelay", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
s.close()

# A non-blocking connect is the process's to finish.
s = socket.socket()
s.setblocking(False)
rc = s.connect_ex((gw, tcp))
select.select([], [s], [], 10)
out("nonblocking", "%s %d" % (rc in (0, errno.EINPROGRESS), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
s.setblocking(True)
out("nonblocking-talk", talk(s, b"two"))
s.close()

# A dual-stack socket to an IPv4-mapped address.
s = socket.socket(socket.AF_INET6)
s.settimeout(10)
s.connect(("::ffff:" + gw, tcp))
out("mapped", talk(s, b"six"))
s.close()

# A closed port refuses.
try:
    socket.create_connection((gw, closed), timeout=10)
    out("refused", "connected")
except OSError as e:
    out("refused", errno.errorcode.get(e.errno, e))

# A blocking connect that gets no answer (the listener's queue is full)
# ends at SO_SNDTIMEO with EINPROGRESS, as the kernel's does.
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 0))
t0 = time.time()
try:
    s.connect((gw, full))
    out("sndtimeo", "connected")
except OSError as e:
    out("sndtimeo", "%s %s" % (errno.errorcode.get(e.errno, e.errno), 0.8 < time.time() - t0 < 5))

# Connected UDP.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
u.connect((gw, udp))
u.send(b"dgram")
out("udp", u.recv(100).decode())
u.close()

# A socket an epoll set watches before it connects stays the process's
# own: the set would not see a new one. (A new process: the daemon keeps a
# thread's epoll sets for a moment, thread.go.)
epoll_first = """
import select, socket
s = socket.socket()
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT)
s.connect_ex(('%s', %d))
print(s.getsockname()[0])
""" % (gw, tcp)
r = subprocess.run([sys.executable, "-c", epoll_first], capture_output=True, text=True)
out("epoll-first", (r.stdout + r.stderr).strip().replace("\n", " "))

# So does a socket of a namespace nested in the sandbox, which has no route.
nested = "import socket\ntry:\n socket.create_connection(('%s', %d), timeout=5)\n print('connected')\nexcept OSError as e:\n print(e.errno)" % (gw, tcp)
r = subprocess.run(["unshare", "-n", sys.executable, "-c", nested], capture_output=True, text=True)
out("nested", (r.stdout + r.stderr).strip().replace("\n", " "))

# What bypass leaves alone: Unix sockets, the sandbox's own loopback and
# a socket the process bound first (that one goes out of eth0, where
# nothing answers).
l = socket.socket(socket.AF_UNIX)
l.bind("\0usernet-bypass-test")
l.listen()
c = socket.socket(socket.AF_UNIX)
c.connect("\0usernet-bypass-test")
out("unix", "ok")
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
c = socket.create_connection(l.getsockname(), timeout=10)
out("loopback", c.getpeername()[0])
b = socket.socket()
b.bind(("0.0.0.0", 0))
b.settimeout(1)
try:
    b.connect((gw, tcp))
    out("bound", "connected")
except OSError as e:
    out("bound", "timeout" if isinstance(e, TimeoutError) else e)
`

// TestBypass: with Spec.Bypass the sandbox's connects to the gateway's
// address reach host listeners on loopback through host sockets, in each
// way a client connects, and everything the route does not claim behaves
// as without bypass.
func TestBypass(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	sandboxtest.RequireTUN(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("needs python3 for a client inside the sandbox")
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var peers sync.Map
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peers.Store(c.RemoteAddr().(*net.TCPAddr).IP.String(), true)
			go func() {
				defer c.Close()
				buf := make([]byte, 100)
				n, err := c.Read(buf)
				if err == nil {
					c.Write([]byte("echo " + string(buf[:n])))
				}
			}()
		}
	}()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	closed, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	fullPort := fullListener(t)

	gw := netip.MustParseAddr("10.0.2.2")
	route := func(dst netip.AddrPort) (netip.AddrPort, bool) {
		if dst.Addr() != gw {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dst.Port()), true
	}
	port := func(a net.Addr) string { return strconv.Itoa(int(netip.MustParseAddrPort(a.String()).Port())) }
	outR, outW := pipe(t)
	s := start(t, Spec{
		Args:   []string{python, "-c", bypassClient, port(ln.Addr()), port(pc.LocalAddr()), strconv.Itoa(closedPort), strconv.Itoa(fullPort)},
		Stdout: outW,
		Stderr: outW,
		Net:    NetBridge,
		Iface:  &Iface{Name: "eth0", MAC: vswitch.MAC{0x02, 0x42, 10, 0, 2, 15}, Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: gw},
		Bypass: route,
	})
	outW.Close()
	defer s.TAP().Close()
	got := map[string]string{}
	var lines []string
	sc := bufio.NewScanner(outR)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if name, value, ok := strings.Cut(sc.Text(), " "); ok {
			got[name] = value
		}
	}
	if code, err := s.Wait(); code != 0 || err != nil {
		t.Fatalf("client exited %d (%v):\n%s", code, err, strings.Join(lines, "\n"))
	}
	tcpPort := port(ln.Addr())
	want := map[string]string{
		"blocking":         "echo one",
		"sockname":         "127.0.0.1", // the host's side: the documented difference
		"peername":         "127.0.0.1:" + tcpPort,
		"inheritable":      "False",
		"inheritable2":     "True",
		"nodelay":          "1",
		"nonblocking":      "True 0",
		"nonblocking-talk": "echo two",
		"mapped":           "echo six",
		"refused":          "ECONNREFUSED",
		"sndtimeo":         "EINPROGRESS True",
		"udp":              "echo dgram",
		"unix":             "ok",
		"loopback":         "127.0.0.1",
		"bound":            "timeout",
		"epoll-first":      "10.0.2.15",
		"nested":           "101", // ENETUNREACH
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	if t.Failed() {
		t.Logf("client output:\n%s", strings.Join(lines, "\n"))
	}
	if _, ok := peers.Load("127.0.0.1"); !ok {
		t.Error("the host listener saw no connection from 127.0.0.1")
	}
}

// TestScanEpolls: the epoll check sees a socket registered under its own
// number, and names the epoll sets it passed.
func TestScanEpolls(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	watched, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(watched)
	free, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(free)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, watched, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		t.Fatal(err)
	}
	if w, _, err := scanEpolls(tid, watched); err != nil || !w {
		t.Errorf("scanEpolls(watched socket) = %v, %v; want true", w, err)
	}
	w, epolls, err := scanEpolls(tid, free)
	if err != nil || w || !slices.Contains(epolls, ep) {
		t.Errorf("scanEpolls(free socket) = %v, %v, %v; want false and the epoll set %d among the sets", w, epolls, err, ep)
	}
	if e := epollHas(tid, ep, watched); e != 0 {
		t.Errorf("epollHas(watched) = %v, want 0", e)
	}
	if e := epollHas(tid, ep, free); e != unix.ENOENT {
		t.Errorf("epollHas(free) = %v, want ENOENT", e)
	}
	if e := epollHas(tid, free, watched); e == 0 || e == unix.ENOENT {
		t.Errorf("epollHas on a socket as the set = %v, want an error saying it is no epoll set", e)
	}
}

// fullListener returns the port of a loopback listener that never accepts
// and whose queue is already full, so that a further connect's SYNs go
// unanswered.
func fullListener(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	// A backlog of 0 queues one connection; this one fills it.
	c, err := net.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return port
}

// TestInSandboxNetns: a socket of the sandbox's namespace passes, and
// teaches the supervisor the namespace's cookie, which then answers alone;
// without the cookie, a socket whose namespace file differs is refused.
func TestInSandboxNetns(t *testing.T) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Skip(err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	s := &supervisor{nsDev: st.Dev, nsIno: st.Ino}
	if err := s.inSandboxNetns(fd); err != nil {
		t.Fatalf("socket of the namespace refused: %v", err)
	}
	if s.nsCookie == 0 {
		t.Skip("no SO_NETNS_COOKIE (Linux 5.14)")
	}
	s.nsIno++ // the namespace file no longer matches: only the cookie can pass it
	if err := s.inSandboxNetns(fd); err != nil {
		t.Errorf("with the cookie learnt: %v, want it to answer alone", err)
	}
	s.nsCookie = 0
	if err := s.inSandboxNetns(fd); err == nil {
		t.Error("a socket whose namespace file differs passed")
	}
}
