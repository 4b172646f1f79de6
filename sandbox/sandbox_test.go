package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/sandbox/sandboxtest"
	vswitch "github.com/usernet/usernet/switch"
)

// bridgeScript reports what the command sees, waits for a line on stdin
// (the test writes a frame into the TAP meanwhile), then reports eth0's
// received packets.
const bridgeScript = `
echo uid=$(id -u)
echo hostname=$(cat /proc/sys/kernel/hostname)
echo hosts=$(cat /etc/hosts)
echo resolv=$(cat /etc/resolv.conf)
echo mac=$(cat /sys/class/net/eth0/address)
echo mtu=$(cat /sys/class/net/eth0/mtu)
echo links=$(ls /sys/class/net)
echo netns=$(readlink /proc/self/ns/net)
echo fds=$(ls /proc/self/fd)
if command -v ip >/dev/null; then
	echo addr=$(ip -o -4 addr show dev eth0 | awk '{print $4}')
	echo route=$(ip route show default)
fi
if (echo x >/etc/hosts) 2>/dev/null; then echo etc=writable; else echo etc=read-only; fi
echo rx0=$(cat /sys/class/net/eth0/statistics/rx_packets)
echo ready
read line
echo rx1=$(cat /sys/class/net/eth0/statistics/rx_packets)
`

func TestBridge(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	sandboxtest.RequireTUN(t)
	hostHosts, hostResolv := readFile(t, "/etc/hosts"), readFile(t, "/etc/resolv.conf")
	hostNetns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	mac := vswitch.MAC{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}
	stdinR, stdinW := pipe(t)
	outR, outW := pipe(t)
	s := start(t, Spec{
		Args:       []string{"/bin/sh", "-c", bridgeScript},
		Hostname:   "web",
		Stdin:      stdinR,
		Stdout:     outW,
		Stderr:     outW,
		Net:        NetBridge,
		Iface:      &Iface{Name: "eth0", MAC: mac, Addr: netip.MustParsePrefix("172.17.0.2/16"), Gateway: netip.MustParseAddr("172.17.0.1"), MTU: 1400},
		ResolvConf: []byte("nameserver 172.17.0.1\n"),
		Hosts:      []byte("172.17.0.2 web\n"),
	})
	stdinR.Close()
	outW.Close()

	// Read the report up to "ready"; the command now waits on stdin.
	out := bufio.NewScanner(outR)
	var report strings.Builder
	for out.Scan() && out.Text() != "ready" {
		report.WriteString(out.Text() + "\n")
	}
	got := fields(report.String())
	want := map[string]string{
		"uid":      "0",
		"hostname": "web",
		"hosts":    "172.17.0.2 web",
		"resolv":   "nameserver 172.17.0.1",
		"mac":      "02:42:ac:11:00:02",
		"mtu":      "1400",
		"links":    "eth0 lo",
		"etc":      "read-only",
		"fds":      "0 1 2 3", // ls's own three and its directory: nothing leaked
		"netns":    got["netns"],
		"rx0":      got["rx0"],
	}
	if _, err := exec.LookPath("ip"); err == nil {
		want["addr"] = "172.17.0.2/16"
		want["route"] = "default via 172.17.0.1 dev eth0"
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("inside the sandbox (-want +got):\n%s", diff)
	}
	if got["netns"] == "" || got["netns"] == hostNetns {
		t.Errorf("sandbox network namespace %q, want a new one (host: %q)", got["netns"], hostNetns)
	}

	// Outside, the agent and the command run as the caller.
	cmds := children(t, s.Pid())
	if len(cmds) != 1 {
		t.Fatalf("agent's children: %v, want the command alone", cmds)
	}
	for _, pid := range []int{s.Pid(), cmds[0]} {
		if uid := statusUID(t, pid); uid != os.Getuid() {
			t.Errorf("pid %d runs as uid %d outside, want %d", pid, uid, os.Getuid())
		}
	}

	// The TAP: what the agent sent over the control channel.
	tap := s.TAP()
	if tap == nil {
		t.Fatal("TAP() = nil for NetBridge")
	}
	defer tap.Close()
	ifr, err := unix.NewIfreq("")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(int(tap.Fd()), unix.TUNGETIFF, ifr); err != nil {
		t.Fatalf("TUNGETIFF: %v", err)
	}
	const flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if ifr.Name() != "eth0" || ifr.Uint16()&flags != flags {
		t.Errorf("TUNGETIFF = %q flags %#x, want eth0 with %#x", ifr.Name(), ifr.Uint16(), flags)
	}

	// A frame written to the TAP arrives on eth0 inside.
	frame := make([]byte, vswitch.VnetHdrLen+60) // zero vnet header: a plain frame
	eth := frame[vswitch.VnetHdrLen:]
	copy(eth[0:6], vswitch.Broadcast[:])
	copy(eth[6:12], []byte{0x02, 0x42, 0xac, 0x11, 0x00, 0x01})
	eth[12], eth[13] = 0x88, 0xb5 // local experimental EtherType
	if _, err := tap.Write(frame); err != nil {
		t.Fatalf("write frame to TAP: %v", err)
	}
	if _, err := stdinW.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	var rest strings.Builder
	for out.Scan() {
		rest.WriteString(out.Text() + "\n")
	}
	rx0, err0 := strconv.Atoi(got["rx0"])
	rx1, err1 := strconv.Atoi(fields(rest.String())["rx1"])
	if err := errors.Join(err0, err1); err != nil || rx1 != rx0+1 {
		t.Errorf("eth0 rx_packets went from %q to %q (%v), want one more", got["rx0"], fields(rest.String())["rx1"], err)
	}
	if code, err := s.Wait(); code != 0 || err != nil {
		t.Errorf("Wait() = %d, %v; want 0, nil", code, err)
	}
	if h, r := readFile(t, "/etc/hosts"), readFile(t, "/etc/resolv.conf"); h != hostHosts || r != hostResolv {
		t.Errorf("host's /etc/hosts or /etc/resolv.conf changed")
	}
	if hostHosts == want["hosts"]+"\n" || hostResolv == want["resolv"]+"\n" {
		t.Errorf("host's /etc files equal the sandbox's; the test proves nothing")
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestExitStatus(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{"success", "exit 0", 0},
		{"exit code", "exit 3", 3},
		{"killed by SIGKILL", "kill -KILL $$", 137},
		{"killed by SIGTERM", "kill -TERM $$", 143},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, code := run(t, Spec{Net: NetNone}, tt.script)
			if code != tt.want {
				t.Errorf("exit status %d, want %d", code, tt.want)
			}
		})
	}
}

func TestSignal(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	tests := []struct {
		name    string
		deliver func(s *Sandbox) error
	}{
		{"Signal", func(s *Sandbox) error { return s.Signal(unix.SIGTERM) }},
		{"to the agent", func(s *Sandbox) error { return unix.Kill(s.Pid(), unix.SIGTERM) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w := pipe(t)
			s := start(t, Spec{
				Args:   []string{"/bin/sh", "-c", "trap 'exit 42' TERM; echo ready; sleep 1000 & wait"},
				Stdout: w,
				Net:    NetNone,
			})
			w.Close()
			line, err := bufio.NewReader(r).ReadString('\n')
			if line != "ready\n" {
				t.Fatalf("command said %q (%v), want ready", line, err)
			}
			if err := tt.deliver(s); err != nil {
				t.Fatalf("deliver SIGTERM: %v", err)
			}
			if code, err := s.Wait(); code != 42 || err != nil {
				t.Errorf("Wait() = %d, %v; want 42 from the command's trap", code, err)
			}
			if err := s.Signal(unix.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
				t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
			}
		})
	}
}

func TestOrphanReaped(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	// The intermediate shell exits at once, orphaning sleep, which the
	// agent must reap when it exits: a zombie would keep /proc/PID.
	const script = `
p=$(sh -c 'sleep 0.3 </dev/null >/dev/null 2>&1 & echo $!')
i=0
while [ -e /proc/$p ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
if [ -e /proc/$p ]; then echo "not reaped: $(grep State /proc/$p/status)"; else echo reaped; fi
`
	out, code := run(t, Spec{Net: NetNone}, script)
	if out != "reaped\n" || code != 0 {
		t.Errorf("got %q, status %d; want the orphan reaped", out, code)
	}
}

func TestNotFound(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	dir := t.TempDir()
	data, noFormat := dir+"/data", dir+"/no-format"
	if err := errors.Join(os.WriteFile(data, []byte("x"), 0o644), os.WriteFile(noFormat, []byte{0x7f, 'E', 'L', 'F'}, 0o755)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		dir  string
		msg  string
		code int
		is   error
	}{
		{"not in PATH", []string{"nosuch"}, "", `exec: "nosuch": executable file not found in $PATH`, 127, exec.ErrNotFound},
		{"no such path", []string{"/nosuch/cmd"}, "", `exec: "/nosuch/cmd": stat /nosuch/cmd: no such file or directory`, 127, os.ErrNotExist},
		{"relative to Dir", []string{"./nosuch"}, dir, `exec: "./nosuch": stat ` + dir + `/nosuch: no such file or directory`, 127, os.ErrNotExist},
		{"not executable", []string{data}, "", `exec: "` + data + `": permission denied`, 126, os.ErrPermission},
		{"not a program", []string{noFormat}, "", "fork/exec " + noFormat + ": exec format error", 126, syscall.ENOEXEC},
		{"no such directory", []string{"true"}, "/nosuch", "stat /nosuch: no such file or directory", 127, os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ownChildren(t)
			s, err := Start(context.Background(), Spec{Args: tt.args, Dir: tt.dir, Net: NetNone})
			if err == nil {
				s.Close()
				t.Fatalf("Start(%q) succeeded", tt.args)
			}
			var se *StartError
			if err.Error() != tt.msg || !errors.As(err, &se) || se.Code != tt.code || !errors.Is(err, tt.is) {
				t.Errorf("Start(%q) = %q (%T), want %q, status %d, errors.Is %v", tt.args, err, err, tt.msg, tt.code, tt.is)
			}
			if after := ownChildren(t); !cmp.Equal(before, after) {
				t.Errorf("children before Start %v, after %v: something was left behind", before, after)
			}
		})
	}
}

func TestExec(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	stdinR, stdinW := pipe(t)
	outR, outW := pipe(t)
	s := start(t, Spec{
		Args:   []string{"/bin/sh", "-c", "readlink /proc/self/ns/net; cat >/dev/null"},
		Stdin:  stdinR,
		Stdout: outW,
		Net:    NetNone,
	})
	out := bufio.NewReader(outR)
	mainNetns, _ := out.ReadString('\n')

	tests := []struct {
		name string
		args []string
		env  []string
		want string // output
		code int
	}{
		{"same network namespace", []string{"readlink", "/proc/self/ns/net"}, nil, mainNetns, 0},
		{"uid 0", []string{"id", "-u"}, nil, "0\n", 0},
		{"exit status", []string{"sh", "-c", "exit 5"}, nil, "", 5},
		{"own environment", []string{"sh", "-c", "echo $A"}, []string{"PATH=/usr/bin:/bin", "A=b"}, "b\n", 0},
		{"empty environment", []string{"/usr/bin/env"}, []string{}, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w := pipe(t)
			p, err := s.Exec(ExecSpec{Args: tt.args, Env: tt.env, Stdout: w})
			if err != nil {
				t.Fatalf("Exec(%q): %v", tt.args, err)
			}
			w.Close()
			got, err := bufio.NewReader(r).ReadString('\n')
			if got != tt.want {
				t.Errorf("Exec(%q) printed %q (%v), want %q", tt.args, got, err, tt.want)
			}
			if code, err := p.Wait(); code != tt.code || err != nil {
				t.Errorf("Exec(%q) Wait() = %d, %v; want %d, nil", tt.args, code, err, tt.code)
			}
		})
	}

	t.Run("not found", func(t *testing.T) {
		_, err := s.Exec(ExecSpec{Args: []string{"nosuch"}})
		var se *StartError
		if !errors.As(err, &se) || se.Code != 127 || !errors.Is(err, exec.ErrNotFound) {
			t.Errorf("Exec(nosuch) = %v, want a StartError with status 127", err)
		}
	})
	t.Run("signal", func(t *testing.T) {
		p, err := s.Exec(ExecSpec{Args: []string{"sleep", "1000"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Signal(unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if code, err := p.Wait(); code != 137 || err != nil {
			t.Errorf("Wait() = %d, %v; want 137, nil", code, err)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		const n = 8
		codes := make(chan [2]int, n)
		for i := range n {
			go func() {
				p, err := s.Exec(ExecSpec{Args: []string{"sh", "-c", fmt.Sprintf("exit %d", i)}})
				if err != nil {
					t.Errorf("Exec %d: %v", i, err)
					codes <- [2]int{i, -1}
					return
				}
				code, _ := p.Wait()
				codes <- [2]int{i, code}
			}()
		}
		for range n {
			if c := <-codes; c[0] != c[1] {
				t.Errorf("Exec of exit %d: status %d", c[0], c[1])
			}
		}
	})

	// Processes still running when the main command exits are killed.
	p, err := s.Exec(ExecSpec{Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	stdinW.Close()
	if code, err := s.Wait(); code != 0 || err != nil {
		t.Errorf("main Wait() = %d, %v; want 0, nil", code, err)
	}
	if code, err := p.Wait(); code != 137 || err != nil {
		t.Errorf("Wait() of an exec outliving the main command = %d, %v; want 137, nil", code, err)
	}
	if _, err := s.Exec(ExecSpec{Args: []string{"true"}}); !errors.Is(err, ErrExited) {
		t.Errorf("Exec after exit = %v, want ErrExited", err)
	}
}

func TestNetModes(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	hostNetns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	hostUserns, err := os.Readlink("/proc/self/ns/user")
	if err != nil {
		t.Fatal(err)
	}
	const script = `echo netns=$(readlink /proc/self/ns/net)
echo userns=$(readlink /proc/self/ns/user)
echo links=$(ls /sys/class/net)
echo loflags=$(cat /sys/class/net/lo/flags)`
	tests := []struct {
		name      string
		net       NetMode
		sameNetns bool
	}{
		{"none", NetNone, false},
		{"host", NetHost, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, Spec{Net: tt.net}, script)
			got := fields(out)
			if code != 0 {
				t.Fatalf("status %d: %s", code, out)
			}
			if same := got["netns"] == hostNetns; same != tt.sameNetns {
				t.Errorf("netns inside %q, host %q: same = %v, want %v", got["netns"], hostNetns, same, tt.sameNetns)
			}
			if got["userns"] == hostUserns {
				t.Errorf("user namespace inside is the host's (%q)", hostUserns)
			}
			if tt.net == NetNone && (got["links"] != "lo" || got["loflags"] != "0x9") {
				t.Errorf("NetNone: links %q, lo flags %q; want lo alone, up (0x9)", got["links"], got["loflags"])
			}
		})
	}
}

func TestKill(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	r, w := pipe(t)
	s := start(t, Spec{
		Args:   []string{"/bin/sh", "-c", "sleep 1000 & echo ready; wait"},
		Stdout: w,
		Net:    NetNone,
	})
	w.Close()
	if line, err := bufio.NewReader(r).ReadString('\n'); line != "ready\n" {
		t.Fatalf("command said %q (%v), want ready", line, err)
	}
	cmds := children(t, s.Pid())
	if len(cmds) != 1 {
		t.Fatalf("agent's children %v, want one", cmds)
	}
	grandchildren := children(t, cmds[0])
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if code, err := s.Wait(); code != 137 || err != nil {
		t.Errorf("Wait() after Kill = %d, %v; want 137, nil", code, err)
	}
	for _, pid := range append(cmds, grandchildren...) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pid %d still exists after Kill and Wait", pid)
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after Wait: %v", err)
	}
}

func TestStartContext(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := ownChildren(t)
	s, err := Start(ctx, Spec{Args: []string{"true"}, Net: NetNone})
	if err == nil {
		s.Close()
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Start with a cancelled context = %v, want context.Canceled", err)
	}
	if after := ownChildren(t); !cmp.Equal(before, after) {
		t.Errorf("children before Start %v, after %v: something was left behind", before, after)
	}
}

func TestSpecValidate(t *testing.T) {
	iface := func(f func(*Iface)) *Iface {
		i := &Iface{Name: "eth0", MAC: vswitch.MAC{2, 0x42, 0xac, 0x11, 0, 2}, Addr: netip.MustParsePrefix("172.17.0.2/16"), Gateway: netip.MustParseAddr("172.17.0.1")}
		f(i)
		return i
	}
	tests := []struct {
		name string
		spec Spec
		want string // substring of the error; "" for valid
	}{
		{"valid bridge", Spec{Args: []string{"true"}, Iface: iface(func(*Iface) {})}, ""},
		{"valid none", Spec{Args: []string{"true"}, Net: NetNone}, ""},
		{"no args", Spec{Net: NetNone}, "Spec.Args is empty"},
		{"empty command", Spec{Args: []string{""}, Net: NetNone}, "Spec.Args is empty"},
		{"bridge without iface", Spec{Args: []string{"true"}}, "needs Spec.Iface"},
		{"long hostname", Spec{Args: []string{"true"}, Net: NetNone, Hostname: strings.Repeat("h", 65)}, "longer than 64"},
		{"tty without stdin", Spec{Args: []string{"true"}, Net: NetNone, TTY: true}, "TTY needs Stdin"},
		{"bad mode", Spec{Args: []string{"true"}, Net: 9}, "unknown network mode 9"},
		{"long name", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.Name = "a-very-long-name" })}, "want 1 to 15 bytes"},
		{"multicast MAC", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.MAC[0] = 1 })}, "not a unicast address"},
		{"network address", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.Addr = netip.MustParsePrefix("172.17.0.0/16") })}, "not a host address"},
		{"no address", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.Addr = netip.Prefix{} })}, "not a host address"},
		{"gateway outside", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.Gateway = netip.MustParseAddr("10.0.0.1") })}, "gateway 10.0.0.1 is not another address in 172.17.0.0/16"},
		{"gateway is self", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.Gateway = netip.MustParseAddr("172.17.0.2") })}, "is not another address"},
		{"no gateway", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.Gateway = netip.Addr{} })}, ""},
		{"small MTU", Spec{Args: []string{"true"}, Iface: iface(func(i *Iface) { i.MTU = 10 })}, "MTU 10 outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	// Start refuses an invalid spec before creating anything.
	if _, err := Start(context.Background(), Spec{}); err == nil || !strings.Contains(err.Error(), "sandbox: no command") {
		t.Errorf("Start(Spec{}) = %v, want the validation error", err)
	}
}

func TestConnect(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	sandboxtest.RequireTUN(t)
	stdinR, stdinW := pipe(t)
	s := start(t, Spec{Args: []string{"/bin/sh", "-c", "cat >/dev/null"}, Stdin: stdinR, Net: NetNone})
	stdinR.Close()
	inside := func(script string) string {
		t.Helper()
		r, w := pipe(t)
		p, err := s.Exec(ExecSpec{Args: []string{"/bin/sh", "-c", script}, Stdout: w, Stderr: w})
		if err != nil {
			t.Fatalf("Exec: %v", err)
		}
		w.Close()
		out, _ := io.ReadAll(r)
		if code, err := p.Wait(); code != 0 || err != nil {
			t.Fatalf("%q: status %d, %v: %s", script, code, err, out)
		}
		return string(out)
	}
	iface := Iface{Name: "eth1", MAC: vswitch.MAC{0x02, 0x42, 0x0a, 0x09, 0x00, 0x02}, Addr: netip.MustParsePrefix("10.9.0.2/24"), MTU: 9000}
	tap, err := s.Connect(context.Background(), iface)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	script := `echo links=$(ls /sys/class/net)
echo mac=$(cat /sys/class/net/eth1/address)
echo mtu=$(cat /sys/class/net/eth1/mtu)`
	want := map[string]string{"links": "eth1 lo", "mac": "02:42:0a:09:00:02", "mtu": "9000"}
	if _, err := exec.LookPath("ip"); err == nil {
		script += "\necho addr=$(ip -o -4 addr show dev eth1 | awk '{print $4}')\necho routes=$(ip route | wc -l)"
		want["addr"], want["routes"] = "10.9.0.2/24", "1" // the on-link prefix only: no gateway, no default route
	}
	if diff := cmp.Diff(want, fields(inside(script))); diff != "" {
		t.Errorf("after Connect (-want +got):\n%s", diff)
	}
	if _, err := s.Connect(context.Background(), iface); err == nil || !strings.Contains(err.Error(), "eth1") {
		t.Errorf("second Connect of eth1 = %v, want an error naming it", err)
	}
	tap.Close()
	if got := inside("ls /sys/class/net"); got != "lo\n" {
		t.Errorf("after closing the TAP, devices %q, want lo alone", got)
	}
	stdinW.Close()
	if code, err := s.Wait(); code != 0 || err != nil {
		t.Errorf("Wait() = %d, %v", code, err)
	}
	if _, err := s.Connect(context.Background(), iface); !errors.Is(err, ErrExited) {
		t.Errorf("Connect after exit = %v, want ErrExited", err)
	}
}

// BenchmarkStart measures a sandbox's whole life for a trivial command:
// namespaces, agent, setup, the command, its exit and the teardown. It
// runs as whoever runs it (root gets a user namespace mapping root).
func BenchmarkStart(b *testing.B) {
	sandboxtest.RequireUserns(b)
	benchmarks := []struct {
		name string
		spec Spec
	}{
		{"none", Spec{Net: NetNone}},
		{"bridge", Spec{
			Net:        NetBridge,
			Iface:      &Iface{Name: "eth0", MAC: vswitch.MAC{2, 0x42, 0xac, 0x11, 0, 2}, Addr: netip.MustParsePrefix("172.17.0.2/16"), Gateway: netip.MustParseAddr("172.17.0.1")},
			Hostname:   "bench",
			ResolvConf: []byte("nameserver 172.17.0.1\n"),
			Hosts:      []byte("172.17.0.2 bench\n"),
		}},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			if bm.spec.Net == NetBridge {
				sandboxtest.RequireTUN(b)
			}
			spec := bm.spec
			spec.Args = []string{"/bin/true"}
			for b.Loop() {
				s, err := Start(context.Background(), spec)
				if err != nil {
					b.Fatal(err)
				}
				if code, err := s.Wait(); code != 0 || err != nil {
					b.Fatalf("Wait() = %d, %v", code, err)
				}
				if tap := s.TAP(); tap != nil {
					tap.Close()
				}
			}
		})
	}
}

// A sandbox whose setup fails reports the step and leaves nothing behind.
func TestSetupFailure(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	sandboxtest.RequireTUN(t)
	before := ownChildren(t)
	_, err := Start(context.Background(), Spec{
		Args: []string{"true"},
		Net:  NetBridge,
		// lo exists in every network namespace and is no TAP.
		Iface: &Iface{Name: "lo", MAC: vswitch.MAC{2, 0x42, 0xac, 0x11, 0, 2}, Addr: netip.MustParsePrefix("172.17.0.2/16")},
	})
	var se *StartError
	if err == nil || !strings.HasPrefix(err.Error(), "sandbox: create tap lo: TUNSETIFF:") || errors.As(err, &se) {
		t.Errorf("Start with a TAP named lo = %v, want a setup error from TUNSETIFF", err)
	}
	if after := ownChildren(t); !cmp.Equal(before, after) {
		t.Errorf("children before Start %v, after %v: something was left behind", before, after)
	}
}
