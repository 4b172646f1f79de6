package stack

import (
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/sandbox/sandboxtest"
	vswitch "github.com/usernet/usernet/switch"
)

// These tests need root: they create a network namespace with `ip netns`
// and TAP devices inside it. Without root they skip.

// netnsSeq numbers the namespaces of one test process.
var netnsSeq atomic.Uint32

// testNetns creates a network namespace for the test and removes it at
// cleanup; it skips the test unless running as root with ip(8).
func testNetns(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and a TAP device")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
	name := fmt.Sprintf("usernet-stack-test-%d-%d", os.Getpid(), netnsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%q: %v: %s", args, err, out)
	}
}

func TestTAPRejectsTUN(t *testing.T) {
	ns := testNetns(t)
	var f *os.File
	err := inNetns(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq("tun0")
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), "tun0")
		return nil
	})
	if err != nil {
		t.Fatalf("open TUN: %v", err)
	}
	tap, err := NewTAP(f, nil)
	if err == nil {
		tap.Close()
		t.Fatal("NewTAP accepted a TUN device")
	}
}

// TestTAPGateway opens a vnet TAP in a namespace with CreateTAP, checks
// its flags, puts it on a switch with the gateway, and then pings the
// gateway and moves TCP data both ways from the namespace's kernel.
func TestTAPGateway(t *testing.T) {
	ns := testNetns(t)
	f := createTAP(t, ns)
	ifr, _ := unix.NewIfreq("")
	rc, _ := f.SyscallConn()
	var ioctlErr error
	rc.Control(func(fd uintptr) { ioctlErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr) })
	if ioctlErr != nil {
		t.Fatalf("TUNGETIFF: %v", ioctlErr)
	}
	if got, want := ifr.Uint16(), uint16(unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR); got != want {
		t.Errorf("TUNGETIFF flags %#x, want %#x", got, want)
	}
	tap, err := NewTAP(f, nil)
	if err != nil {
		t.Fatalf("NewTAP: %v", err)
	}
	if !tap.Offloads() || tap.Name() != "tap0" {
		t.Errorf("TAP %q offloads %v, want tap0 with offloads", tap.Name(), tap.Offloads())
	}

	h := tcpHandlerFunc(func(r *TCPRequest) {
		if c, err := r.Accept(); err == nil {
			go echoServe(c)
		}
	})
	n := newTestNet(t, Config{TCP: h})
	att, err := n.sw.Attach(tap, vswitch.PortConfig{Name: "tap0", Offloads: tap.Offloads()})
	if err != nil {
		t.Fatalf("attach TAP: %v", err)
	}
	t.Cleanup(att.Detach)
	configureGuest(t, ns)

	if _, err := exec.LookPath("ping"); err == nil {
		run(t, "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "10", "172.17.0.1")
	} else {
		t.Log("ping(8) not installed; skipping the ping check")
	}

	c := nsDialTCP(t, ns, &unix.SockaddrInet4{Port: 5001, Addr: [4]byte{192, 0, 2, 30}})
	c.SetDeadline(deadline(testContext(t)))
	data := make([]byte, 8<<20)
	rand.Read(data)
	checkEcho(t, c, data)
	// With TSO on the TAP, the kernel hands us super-frames: on average
	// frames from the TAP must be larger than the MTU allows.
	st := att.Stats()
	if st.RxFrames == 0 || st.RxBytes/st.RxFrames <= 1514 {
		t.Errorf("TAP read %d frames, %d bytes: no TSO super-frames", st.RxFrames, st.RxBytes)
	}
}

// nsDialTCP connects a TCP socket made in namespace ns to addr. The
// socket belongs to the namespace it was created in, so only socket(2)
// runs on the switched thread.
func nsDialTCP(t testing.TB, ns string, addr unix.Sockaddr) *net.TCPConn {
	t.Helper()
	var fd int
	if err := inNetns(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatalf("socket in namespace: %v", err)
	}
	tv := unix.Timeval{Sec: int64(testTimeout.Seconds())}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, addr); err != nil {
		unix.Close(fd)
		t.Fatalf("connect from namespace: %v", err)
	}
	f := os.NewFile(uintptr(fd), "tcp")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatalf("FileConn: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// createPlainTAP creates a TAP without virtio-net headers in namespace ns.
func createPlainTAP(t testing.TB, ns, name string) *os.File {
	t.Helper()
	var f *os.File
	err := inNetns(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq(name)
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	if err != nil {
		t.Fatalf("create plain TAP: %v", err)
	}
	return f
}

// configureGuest gives the namespace's tap0 172.17.0.2/16 and a default
// route via the gateway.
func configureGuest(t testing.TB, ns string) {
	t.Helper()
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	run(t, "ip", "-n", ns, "addr", "add", "172.17.0.2/16", "dev", "tap0")
	run(t, "ip", "-n", ns, "link", "set", "tap0", "up")
	run(t, "ip", "-n", ns, "route", "add", "default", "via", "172.17.0.1")
}

// TestFdbasedGateway checks the benchmark gateway: gVisor's fdbased
// endpoint straight on a plain TAP.
func TestFdbasedGateway(t *testing.T) {
	ns := testNetns(t)
	tap := createPlainTAP(t, ns, "tap0")
	h := tcpHandlerFunc(func(r *TCPRequest) {
		if c, err := r.Accept(); err == nil {
			go echoServe(c)
		}
	})
	gw, err := NewFdbased(Config{Name: "fdbased", Addr: gwPrefix, TCP: h}, tap)
	if err != nil {
		t.Fatalf("NewFdbased: %v", err)
	}
	t.Cleanup(gw.Close)
	if _, err := gw.Attach(vswitch.New(vswitch.Config{})); err == nil {
		t.Error("Attach of an fdbased gateway succeeded")
	}
	configureGuest(t, ns)
	c := nsDialTCP(t, ns, &unix.SockaddrInet4{Port: 7, Addr: [4]byte{192, 0, 2, 31}})
	c.SetDeadline(deadline(testContext(t)))
	if _, err := c.Write([]byte("fdbased")); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "fdbased" {
		t.Errorf("echo: %q, %v; want \"fdbased\"", got, err)
	}
}

// createTAP creates the vnet TAP tap0 with MTU 1500 in the namespace ns.
func createTAP(t testing.TB, ns string) *os.File {
	t.Helper()
	var f *os.File
	if err := inNetns(ns, func() (err error) {
		f, err = CreateTAP("tap0", 1500)
		return err
	}); err != nil {
		t.Fatalf("CreateTAP: %v", err)
	}
	return f
}

// inNetns runs fn in the network namespace `ip netns add name` made.
func inNetns(name string, fn func() error) error {
	return sandboxtest.InNetns("/run/netns/"+name, fn)
}
