package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/sandbox"
	"github.com/usernet/usernet/sandbox/sandboxtest"
)

// The integration tests run real sandboxes through the real data path
// (sandbox agent, TAP, switch, gateway, NAT), as the product runs: as an
// unprivileged user (sandboxtest.Unprivileged).

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == sandbox.AgentArg {
		sandbox.AgentMain()
	}
	os.Exit(sandboxtest.Main(m))
}

// asUnprivileged runs the calling integration test as sandboxtest's
// unprivileged user, with TAP devices usable; it returns true when the
// caller must return at once (the test ran in a child). -short skips it.
func asUnprivileged(t *testing.T) bool {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	if sandboxtest.Unprivileged(t) {
		return true
	}
	sandboxtest.RequireTUN(t)
	return false
}

// sandboxScript reports what the sandbox sees, then serves one TCP
// connection on port 80 with a greeting.
const sandboxScript = `
echo hostname=$(cat /proc/sys/kernel/hostname)
echo addr=$(ip -o -4 addr show dev eth0 | awk '{print $4}')
echo mac=$(cat /sys/class/net/eth0/address)
echo mtu=$(cat /sys/class/net/eth0/mtu)
echo route=$(ip route show default)
echo hosts=$(grep -v '^#' /etc/hosts | grep -v ip6 | tr '\t\n' ' ')
echo resolv=$(grep nameserver /etc/resolv.conf | tr '\n' ' ')
if ping -c 1 -W 5 172.17.0.1 >/dev/null 2>&1; then echo ping=ok; else echo ping=fail; fi
echo outbound=$(echo hi | nc -N -w 5 172.17.0.1 $HOST_PORT)
echo hello-from-sandbox | nc -l -N 80
echo served
`

func TestIntegrationRun(t *testing.T) {
	if asUnprivileged(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := New(ctx, Config{StateDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(testLog{t}, nil))})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer e.Close()

	// A service on the host's loopback, which the sandbox reaches through
	// its gateway address (host loopback is on by default).
	hostSvc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostSvc.Close()
	go func() {
		c, err := hostSvc.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line := make([]byte, 3)
		if _, err := io.ReadFull(c, line); err == nil && string(line) == "hi\n" {
			c.Write([]byte("pong\n"))
		}
	}()

	lo := netip.MustParseAddr("127.0.0.1")
	id, warnings, err := e.Run(ctx, RunConfig{
		Name:       "web",
		Env:        []string{fmt.Sprintf("HOST_PORT=%d", hostSvc.Addr().(*net.TCPAddr).Port)},
		Args:       []string{"/bin/sh", "-c", sandboxScript},
		Detach:     true,
		Ports:      []PortBinding{{HostIP: lo, ContainerPort: 80}},
		ExtraHosts: []HostEntry{{Host: "db", IP: netip.MustParseAddr("10.9.9.9")}},
		DNS:        addrs("192.0.2.53"),
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if warnings != nil {
		t.Errorf("warnings = %v", warnings)
	}
	ports, err := e.Port("web")
	if err != nil || len(ports) != 1 {
		t.Fatalf("Port = %v, %v", ports, err)
	}
	hostAddr := netip.AddrPortFrom(ports[0].HostIP, ports[0].HostPort).String()

	// Host -> published port -> gateway -> switch -> TAP -> nc in the sandbox.
	// Until nc listens, the forward's dial into the network is refused and
	// the host connection closes empty; retry a bounded number of times.
	var greeting string
	fetchStart := time.Now()
	defer func() { t.Logf("published port answered after %v", time.Since(fetchStart)) }()
	for i := 0; i < 100 && greeting == ""; i++ {
		greeting = fetch(t, hostAddr)
		if greeting == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if greeting != "hello-from-sandbox\n" {
		t.Fatalf("published port %s answered %q, want the sandbox's greeting", hostAddr, greeting)
	}

	code, err := e.Wait(ctx, id)
	if err != nil || code != 0 {
		t.Fatalf("Wait = %d, %v", code, err)
	}
	logs, err := e.Logs(id, Stdout, false)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(logs)
	logs.Close()
	t.Logf("sandbox output:\n%s", out)
	got := make(map[string]string)
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = strings.TrimSpace(v)
		}
	}
	want := map[string]string{
		"hostname": id[:12],
		"addr":     "172.17.0.2/16",
		"mac":      "02:42:ac:11:00:02",
		"mtu":      "1500",
		"route":    "default via 172.17.0.1 dev eth0",
		"hosts":    "127.0.0.1 localhost 10.9.9.9 db 172.17.0.2 " + id[:12],
		"resolv":   "nameserver 192.0.2.53",
		"ping":     "ok",
		"outbound": "pong",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %q, want %q", k, got[k], w)
		}
	}
	if !strings.Contains(string(out), "served") {
		t.Errorf("output lacks served: the connection did not reach nc")
	}

	// The exit released the port and the address.
	if ln, err := net.Listen("tcp", hostAddr); err != nil {
		t.Errorf("host port %s still taken after exit: %v", hostAddr, err)
	} else {
		ln.Close()
	}
	if n, _ := e.NetworkInspect("bridge"); len(n.Containers) != 0 {
		t.Errorf("bridge still lists %v", n.Containers)
	}

	// A host port in use fails cleanly: nothing is left published,
	// attached or recorded.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	before := e.List(true)
	_, _, err = e.Run(ctx, RunConfig{Args: []string{"sleep", "60"}, Detach: true, Ports: []PortBinding{
		{HostIP: lo, ContainerPort: 80},
		{HostIP: lo, HostPort: uint16(busy.Addr().(*net.TCPAddr).Port), ContainerPort: 81},
	}})
	if !errors.Is(err, ErrConflict) {
		t.Errorf("Run with a busy host port = %v, want ErrConflict", err)
	}
	if after := e.List(true); len(after) != len(before) {
		t.Errorf("failed Run left a record: %v", after)
	}
	if n, _ := e.NetworkInspect("bridge"); len(n.Containers) != 0 {
		t.Errorf("failed Run left an endpoint: %v", n.Containers)
	}

	// A missing command fails cleanly and leaves nothing behind.
	_, _, err = e.Run(ctx, RunConfig{Args: []string{"no-such-command-usernet"}, Detach: true})
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("Run of a missing command = %v, want ErrInvalid wrapping exec.ErrNotFound", err)
	}
	if after := e.List(true); len(after) != len(before) {
		t.Errorf("failed Run left a record: %v", after)
	}

	// The address is handed out again; --rm removes the record.
	id2, _, err := e.Run(ctx, RunConfig{Args: []string{"/bin/sh", "-c", "ip -o -4 addr show dev eth0 | awk '{print $4}'; exit 5"}, Detach: true, AutoRemove: true})
	if err != nil {
		t.Fatalf("second Run: %v", err)
	}
	if j, err := e.Inspect(id2); err == nil && j.NetworkSettings.IPAddress != "" && j.NetworkSettings.IPAddress != "172.17.0.2" {
		t.Errorf("second sandbox address = %s, want 172.17.0.2 again", j.NetworkSettings.IPAddress)
	}
	if code, err := e.Wait(ctx, id2); err != nil || code != 5 {
		t.Errorf("Wait --rm sandbox = %d, %v; want 5", code, err)
	}
	if _, err := e.Inspect(id2); !errors.Is(err, ErrNotFound) {
		t.Errorf("--rm sandbox still inspectable: %v", err)
	}
}

// testLog sends the engine's log lines to the test's log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// fetch connects to addr and returns what it sends before closing ("" if
// the connection fails or closes empty).
func fetch(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestIntegrationStopAndHostMode(t *testing.T) {
	if asUnprivileged(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := New(ctx, Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer e.Close()

	id, warnings, err := e.Run(ctx, RunConfig{Args: []string{"sleep", "600"}, Detach: true, Network: "host", Ports: []PortBinding{{ContainerPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || warnings[0] != hostModeWarning {
		t.Errorf("warnings = %q, want %q", warnings, hostModeWarning)
	}
	p, err := e.Exec(ctx, id, ExecConfig{Args: []string{"/bin/sh", "-c", "exit 4"}})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if code, err := p.Wait(); err != nil || code != 4 {
		t.Errorf("Exec Wait = %d, %v; want 4", code, err)
	}
	if err := e.Stop(ctx, id, StopOptions{Timeout: ptr(5 * time.Second)}); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	j, err := e.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	if j.State.Running || j.State.ExitCode != 128+int(syscall.SIGTERM) {
		t.Errorf("after Stop: running %v exit %d, want exited by SIGTERM (143)", j.State.Running, j.State.ExitCode)
	}
	if rows := e.List(true); len(rows) != 1 || !strings.HasPrefix(rows[0].Status, fmt.Sprintf("Exited (%d)", 143)) {
		t.Errorf("List(true) = %+v", rows)
	}
	if err := e.Remove(ctx, id, false); err != nil {
		t.Errorf("Remove: %v", err)
	}
}

func TestIntegrationRestart(t *testing.T) {
	if asUnprivileged(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	e, err := New(ctx, Config{StateDir: dir})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	id, _, err := e.Run(ctx, RunConfig{Name: "survivor", Args: []string{"sleep", "600"}, Detach: true,
		Ports: []PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1"), ContainerPort: 80}}})
	if err != nil {
		e.Close()
		t.Fatalf("Run: %v", err)
	}
	ports, _ := e.Port(id)
	j, _ := e.Inspect(id)
	pid := j.State.Pid
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The sandbox died with the engine.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("sandbox agent %d still exists after Close: %v", pid, err)
	}

	e, err = New(ctx, Config{StateDir: dir})
	if err != nil {
		t.Fatalf("New after restart: %v", err)
	}
	defer e.Close()
	j, err = e.Inspect("survivor")
	if err != nil {
		t.Fatal(err)
	}
	if j.State.Status != "exited" || j.State.ExitCode != exitCodeDaemonRestart || j.NetworkSettings.IPAddress != "" {
		t.Errorf("after restart: status %s code %d ip %q; want exited 255 without an address", j.State.Status, j.State.ExitCode, j.NetworkSettings.IPAddress)
	}
	if ln, err := net.Listen("tcp", netip.AddrPortFrom(ports[0].HostIP, ports[0].HostPort).String()); err != nil {
		t.Errorf("published port still taken after restart: %v", err)
	} else {
		ln.Close()
	}
	id2, _, err := e.Run(ctx, RunConfig{Args: []string{"sleep", "600"}, Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	j2, _ := e.Inspect(id2)
	if j2.NetworkSettings.IPAddress != "172.17.0.2" {
		t.Errorf("first address after restart = %q, want 172.17.0.2 again", j2.NetworkSettings.IPAddress)
	}
	if err := e.Remove(ctx, id2, true); err != nil {
		t.Errorf("Remove -f: %v", err)
	}
}
