package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/usernet/usernet/api"
	"github.com/usernet/usernet/engine"
)

// fakeEngine stands behind a real api.Server in these tests, so that each
// test drives the CLI exactly as a user does: flags, socket, descriptors.
type fakeEngine struct {
	runErr   error
	exitCode int

	mu         sync.Mutex
	netCreates []engine.NetworkCreateConfig
	pruned     []string // what NetworkPrune removes
	prunes     int      // NetworkPrune calls
	runs       []engine.RunConfig
	kills      []syscall.Signal
	stops      []engine.StopOptions
	killed     chan struct{} // closed on the first Kill, ending Wait
}

const fakeID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func (f *fakeEngine) Run(ctx context.Context, cfg engine.RunConfig) (string, []string, error) {
	if f.runErr != nil {
		return "", nil, f.runErr
	}
	var warnings []string
	if cfg.Network == "host" && len(cfg.Ports) > 0 {
		warnings = append(warnings, "Published ports are discarded when using host network mode")
	}
	cfg.Stdin, cfg.Stdout, cfg.Stderr = nil, nil, nil
	f.mu.Lock()
	f.runs = append(f.runs, cfg)
	f.mu.Unlock()
	return fakeID, warnings, nil
}

func (f *fakeEngine) Wait(ctx context.Context, name string) (int, error) {
	if f.killed != nil {
		select {
		case <-f.killed:
			f.mu.Lock()
			defer f.mu.Unlock()
			return 128 + int(f.kills[0]), nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return f.exitCode, nil
}

func (f *fakeEngine) Stop(ctx context.Context, name string, opts engine.StopOptions) error {
	if err := known(name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, opts)
	return nil
}

func (f *fakeEngine) Kill(name string, sig syscall.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kills = append(f.kills, sig)
	if len(f.kills) == 1 && f.killed != nil {
		close(f.killed)
	}
	return nil
}

func (f *fakeEngine) Remove(ctx context.Context, name string, force bool) error { return known(name) }

func (f *fakeEngine) Exec(ctx context.Context, name string, cfg engine.ExecConfig) (api.Process, error) {
	if err := known(name); err != nil {
		return nil, err
	}
	if f.runErr != nil {
		return nil, f.runErr
	}
	return exitedProcess(f.exitCode), nil
}

func (f *fakeEngine) List(all bool) []engine.ContainerSummary {
	return []engine.ContainerSummary{{ID: fakeID, Names: []string{"web"}, Command: "sleep 100", RunningFor: "2 minutes ago", Status: "Up 2 minutes"}}
}

func (f *fakeEngine) Inspect(name string) (engine.ContainerJSON, error) {
	if err := known(name); err != nil {
		return engine.ContainerJSON{}, err
	}
	return engine.ContainerJSON{ID: fakeID, Name: "/web", Path: "sleep", Args: []string{"100"}}, nil
}

func (f *fakeEngine) Logs(name string, stream engine.LogStream, follow bool) (io.ReadCloser, error) {
	if err := known(name); err != nil {
		return nil, err
	}
	if stream == engine.Stderr {
		return io.NopCloser(strings.NewReader("error line\n")), nil
	}
	return io.NopCloser(strings.NewReader("log line\n")), nil
}

func (f *fakeEngine) Port(name string) ([]engine.PortMapping, error) {
	if err := known(name); err != nil {
		return nil, err
	}
	return []engine.PortMapping{{ContainerPort: 80, Proto: "tcp", HostIP: netip.IPv4Unspecified(), HostPort: 5000}}, nil
}

func (f *fakeEngine) Networks() []engine.NetworkResource {
	return []engine.NetworkResource{{Name: "bridge", ID: strings.Repeat("f", 64), Driver: "bridge", Scope: "local"}}
}

func (f *fakeEngine) NetworkInspect(name string) (engine.NetworkResource, error) {
	if name != "bridge" {
		return engine.NetworkResource{}, fmt.Errorf("%w: no such network: %s", engine.ErrNotFound, name)
	}
	return f.Networks()[0], nil
}

// NetworkCreate refuses "bridge" as the engine does and accepts the rest.
func (f *fakeEngine) NetworkCreate(ctx context.Context, cfg engine.NetworkCreateConfig) (string, error) {
	if cfg.Name == "bridge" {
		return "", kindedError{engine.ErrInvalid, `network name "bridge" is reserved for a predefined network: choose another name`}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.netCreates = append(f.netCreates, cfg)
	return fakeID, nil
}

// NetworkRemove knows the networks "mynet" (removable) and "busy" (in use).
func (f *fakeEngine) NetworkRemove(name string) error {
	switch name {
	case "mynet":
		return nil
	case "busy":
		return kindedError{engine.ErrConflict, "error while removing network: network busy has active endpoints (name:\"web\" id:\"0123456789ab\")"}
	}
	return kindedError{engine.ErrNotFound, "no such network: " + name}
}

func (f *fakeEngine) NetworkPrune() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prunes++
	return f.pruned, nil
}

// known accepts the one sandbox the fake has, "web".
func known(name string) error {
	if name != "web" {
		return fmt.Errorf("%w: no such sandbox: %s", engine.ErrNotFound, name)
	}
	return nil
}

// exitedProcess is an exec'd command that has already exited.
type exitedProcess int

func (p exitedProcess) Wait() (int, error)          { return int(p), nil }
func (p exitedProcess) Signal(syscall.Signal) error { return nil }

// result is what one CLI invocation did.
type result struct {
	code           int
	stdout, stderr string
}

// usernet runs the CLI with args against a daemon serving eng, with
// /dev/null as stdin.
func usernet(t *testing.T, eng api.Engine, args ...string) result {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "usernet.sock")
	l, err := api.Listen(sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(eng, nil)
	go srv.Serve(l)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()

	in, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out := tempFile(t, dir, "stdout")
	errOut := tempFile(t, dir, "stderr")
	e := &env{
		stdio:   stdio{in: in, out: out, err: errOut},
		connect: func(ctx context.Context) (*api.Client, error) { return api.Connect(ctx, sock, nil) },
	}
	code := executeEnv(context.Background(), e, args)
	return result{code: code, stdout: readBack(t, out), stderr: readBack(t, errOut)}
}

func tempFile(t *testing.T, dir, name string) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readBack(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRunParsesFlagsAndCommand(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want engine.RunConfig
		out  string
	}{
		{name: "plain", args: []string{"run", "echo", "hi"},
			want: engine.RunConfig{Args: []string{"echo", "hi"}, Network: "bridge"}},
		{name: "double dash", args: []string{"run", "--rm", "--", "ls", "-l"},
			want: engine.RunConfig{Args: []string{"ls", "-l"}, Network: "bridge", AutoRemove: true}},
		{name: "flags after the command are the command's", args: []string{"run", "-i", "sh", "-c", "x", "-e", "FOO=1", "--", "-d"},
			want: engine.RunConfig{Args: []string{"sh", "-c", "x", "-e", "FOO=1", "--", "-d"}, Network: "bridge", Interactive: true}},
		{name: "detached with ports", args: []string{"run", "-d", "--name", "web", "-p", "8080:80", "-p", "127.0.0.1::53/udp", "-p", "[::1]:9000-9001:90-91", "sleep", "9"},
			want: engine.RunConfig{Name: "web", Args: []string{"sleep", "9"}, Network: "bridge", Detach: true, Ports: []engine.PortBinding{
				{HostPort: 8080, ContainerPort: 80, Proto: "tcp"},
				{HostIP: netip.MustParseAddr("127.0.0.1"), ContainerPort: 53, Proto: "udp"},
				{HostIP: netip.MustParseAddr("::1"), HostPort: 9000, ContainerPort: 90, Proto: "tcp"},
				{HostIP: netip.MustParseAddr("::1"), HostPort: 9001, ContainerPort: 91, Proto: "tcp"},
			}},
			out: fakeID + "\n"},
		{name: "bypass", args: []string{"run", "--bypass", "true"},
			want: engine.RunConfig{Args: []string{"true"}, Network: "bridge", Bypass: true}},
		{name: "publish all exposed", args: []string{"run", "-P", "--expose", "90-91", "--expose", "53/udp", "true"},
			want: engine.RunConfig{Args: []string{"true"}, Network: "bridge", PublishAll: true,
				Expose: []engine.PortProto{{Port: 90, Proto: "tcp"}, {Port: 91, Proto: "tcp"}, {Port: 53, Proto: "udp"}}}},
		{name: "names and env", args: []string{"run", "-e", "A=1", "--env", "B=x,y", "--hostname", "h", "--network", "none",
			"--dns", "1.1.1.1", "--dns-search", "example.com", "--add-host", "db:10.0.0.2", "--add-host", "v6=[::2]", "true"},
			want: engine.RunConfig{Args: []string{"true"}, Env: []string{"A=1", "B=x,y"}, Hostname: "h", Network: "none",
				DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1")}, DNSSearch: []string{"example.com"},
				ExtraHosts: []engine.HostEntry{{Host: "db", IP: netip.MustParseAddr("10.0.0.2")}, {Host: "v6", IP: netip.MustParseAddr("::2")}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eng := &fakeEngine{}
			res := usernet(t, eng, tc.args...)
			if res.code != 0 || res.stderr != "" {
				t.Fatalf("usernet %v = %+v, want success", tc.args, res)
			}
			if diff := cmp.Diff([]engine.RunConfig{tc.want}, eng.runs, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("RunConfig mismatch (-want +got):\n%s", diff)
			}
			if res.stdout != tc.out {
				t.Errorf("stdout = %q, want %q", res.stdout, tc.out)
			}
		})
	}
}

// kindedError is an engine error as the engine makes them: it matches kind
// with errors.Is without the kind's text in its message.
type kindedError struct {
	kind error
	msg  string
}

func (e kindedError) Error() string        { return e.msg }
func (e kindedError) Is(target error) bool { return target == e.kind }

func TestExitStatusAndErrors(t *testing.T) {
	notFound := kindedError{engine.ErrCommandNotFound, `exec: "nosuch": executable file not found in $PATH`}
	tests := []struct {
		name string
		eng  *fakeEngine
		args []string
		want result
	}{
		{name: "command's status passes through", eng: &fakeEngine{exitCode: 42}, args: []string{"run", "false"},
			want: result{code: 42}},
		{name: "missing command", args: []string{"run"},
			want: result{code: 125, stderr: "usernet: \"usernet run\" requires at least 1 argument: the command to run\n"}},
		{name: "only flags", args: []string{"run", "-d", "--rm"},
			want: result{code: 125, stderr: "usernet: \"usernet run\" requires at least 1 argument: the command to run\n"}},
		{name: "unknown flag", args: []string{"run", "--bogus", "x"},
			want: result{code: 125, stderr: "usernet: unknown flag: --bogus (see 'usernet run --help')\n"}},
		{name: "unknown command", args: []string{"frob"},
			want: result{code: 125, stderr: "usernet: unknown command \"frob\" for \"usernet\"\n"}},
		{name: "bad port", args: []string{"run", "-p", "abc", "x"},
			want: result{code: 125, stderr: "usernet: invalid port spec \"abc\": container port: \"abc\" is not a port number (1-65535)\n"}},
		{name: "bad dns", args: []string{"run", "--dns", "resolver", "x"},
			want: result{code: 125, stderr: "usernet: invalid --dns \"resolver\": not an IP address\n"}},
		{name: "bad add-host", args: []string{"run", "--add-host", "db", "x"},
			want: result{code: 125, stderr: "usernet: invalid --add-host \"db\": want NAME:IP\n"}},
		{name: "tty without a terminal", args: []string{"run", "-t", "sh"},
			want: result{code: 125, stderr: "usernet: the input device is not a TTY\n"}},
		{name: "command not found", eng: &fakeEngine{runErr: fmt.Errorf("start sandbox x: %w", notFound)}, args: []string{"run", "nosuch"},
			want: result{code: 127, stderr: "usernet: start sandbox x: exec: \"nosuch\": executable file not found in $PATH\n"}},
		{name: "command not executable", eng: &fakeEngine{runErr: kindedError{engine.ErrCommandNotExecutable, "exec /etc: permission denied"}}, args: []string{"run", "/etc"},
			want: result{code: 126, stderr: "usernet: exec /etc: permission denied\n"}},
		{name: "name in use", eng: &fakeEngine{runErr: fmt.Errorf("%w: the name \"web\" is already in use", engine.ErrConflict)}, args: []string{"run", "--name", "web", "x"},
			want: result{code: 125, stderr: "usernet: conflict: the name \"web\" is already in use\n"}},
		{name: "multi-line engine error", eng: &fakeEngine{runErr: errors.New("first\nsecond\n")}, args: []string{"run", "x"},
			want: result{code: 125, stderr: "usernet: first; second\n"}},
		{name: "host network warning", args: []string{"run", "--network", "host", "-p", "80:80", "true"},
			want: result{code: 0, stderr: "WARNING: Published ports are discarded when using host network mode\n"}},
		{name: "exec status", eng: &fakeEngine{exitCode: 3}, args: []string{"exec", "web", "sh", "-c", "exit 3"},
			want: result{code: 3}},
		{name: "exec unknown sandbox", args: []string{"exec", "nosuch", "true"},
			want: result{code: 125, stderr: "usernet: not found: no such sandbox: nosuch\n"}},
		{name: "exec command not found", eng: &fakeEngine{runErr: notFound}, args: []string{"exec", "web", "nosuch"},
			want: result{code: 127, stderr: "usernet: exec: \"nosuch\": executable file not found in $PATH\n"}},
		{name: "exec without command", args: []string{"exec", "web"},
			want: result{code: 125, stderr: "usernet: \"usernet exec\" requires at least 2 arguments: the sandbox and the command to run\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eng := tc.eng
			if eng == nil {
				eng = &fakeEngine{}
			}
			got := usernet(t, eng, tc.args...)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(result{})); diff != "" {
				t.Errorf("usernet %v mismatch (-want +got):\n%s", tc.args, diff)
			}
		})
	}
}

func TestManagementCommands(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want result
	}{
		{name: "ps", args: []string{"ps"}, want: result{stdout: "" +
			"CONTAINER ID   COMMAND       CREATED         STATUS         PORTS     NAMES\n" +
			"0123456789ab   \"sleep 100\"   2 minutes ago   Up 2 minutes             web\n"}},
		{name: "ps quiet", args: []string{"ps", "-a", "-q"}, want: result{stdout: "0123456789ab\n"}},
		{name: "stop", args: []string{"stop", "web"}, want: result{stdout: "web\n"}},
		{name: "rm continues past failures", args: []string{"rm", "nosuch", "web"},
			want: result{code: 1, stdout: "web\n", stderr: "usernet: not found: no such sandbox: nosuch\n"}},
		{name: "logs", args: []string{"logs", "web"}, want: result{stdout: "log line\n", stderr: "error line\n"}},
		{name: "logs unknown", args: []string{"logs", "nosuch"}, want: result{code: 1, stderr: "usernet: not found: no such sandbox: nosuch\n"}},
		{name: "port", args: []string{"port", "web"}, want: result{stdout: "80/tcp -> 0.0.0.0:5000\n"}},
		{name: "port filtered", args: []string{"port", "web", "80/tcp"}, want: result{stdout: "0.0.0.0:5000\n"}},
		{name: "port not published", args: []string{"port", "web", "81"},
			want: result{code: 1, stderr: "usernet: no public port 81/tcp published for web\n"}},
		{name: "inspect", args: []string{"inspect", "nosuch"}, want: result{code: 1, stdout: "[]\n", stderr: "usernet: not found: no such sandbox: nosuch\n"}},
		{name: "network ls", args: []string{"network", "ls"}, want: result{stdout: "" +
			"NETWORK ID     NAME      DRIVER    SCOPE\n" +
			"ffffffffffff   bridge    bridge    local\n"}},
		{name: "too many args", args: []string{"logs", "a", "b"},
			want: result{code: 125, stderr: "usernet: \"usernet logs\" takes exactly one sandbox, got 2 argument(s)\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := usernet(t, &fakeEngine{}, tc.args...)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(result{})); diff != "" {
				t.Errorf("usernet %v mismatch (-want +got):\n%s", tc.args, diff)
			}
		})
	}
}

func TestInspectPrintsDockerJSON(t *testing.T) {
	got := usernet(t, &fakeEngine{}, "inspect", "web")
	if got.code != 0 {
		t.Fatalf("inspect = %+v", got)
	}
	// Four-space indent and an array, as docker inspect prints.
	for _, want := range []string{"[\n    {\n        \"Id\": \"" + fakeID + "\",", "        \"Name\": \"/web\","} {
		if !strings.Contains(got.stdout, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, got.stdout)
		}
	}
}

func TestStopTimeoutFlag(t *testing.T) {
	dur := func(d time.Duration) *time.Duration { return &d }
	tests := []struct {
		name string
		args []string
		want *time.Duration
	}{
		{name: "default", args: []string{"stop", "web"}, want: nil},
		{name: "zero kills at once", args: []string{"stop", "-t", "0", "web"}, want: dur(0)},
		{name: "seconds", args: []string{"stop", "--time", "2", "web"}, want: dur(2 * time.Second)},
		{name: "minus one waits forever", args: []string{"stop", "-t", "-1", "web"}, want: dur(-time.Second)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eng := &fakeEngine{}
			if res := usernet(t, eng, tc.args...); res.code != 0 {
				t.Fatalf("usernet %v = %+v", tc.args, res)
			}
			if diff := cmp.Diff([]engine.StopOptions{{Timeout: tc.want}}, eng.stops); diff != "" {
				t.Errorf("stop options mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRunForwardsSignals sends SIGUSR1 to the test process while a
// foreground run waits, and checks that it reached the sandbox (engine
// Kill) instead of the test process, and that the exit status follows.
func TestRunForwardsSignals(t *testing.T) {
	eng := &signalEngine{fakeEngine: fakeEngine{killed: make(chan struct{})}, started: make(chan struct{})}
	go func() {
		<-eng.started
		syscall.Kill(os.Getpid(), syscall.SIGUSR1)
	}()
	res := usernet(t, eng, "run", "sleep", "100")
	want := result{code: 128 + int(syscall.SIGUSR1)}
	if diff := cmp.Diff(want, res, cmp.AllowUnexported(result{})); diff != "" {
		t.Errorf("run mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]syscall.Signal{syscall.SIGUSR1}, eng.kills); diff != "" {
		t.Errorf("forwarded signals mismatch (-want +got):\n%s", diff)
	}
}

// signalEngine tells the test when Run has happened, i.e. when the CLI is
// already catching signals.
type signalEngine struct {
	fakeEngine
	started chan struct{}
}

func (s *signalEngine) Run(ctx context.Context, cfg engine.RunConfig) (string, []string, error) {
	defer close(s.started)
	return s.fakeEngine.Run(ctx, cfg)
}

func TestServePprofRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:6060", "10.1.2.3:6060", "localhost", ":6060"} {
		t.Setenv(pprofEnv, addr)
		if err := servePprof(t.Context(), slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("servePprof with %s=%q: got nil error, want a refusal", pprofEnv, addr)
		}
	}
}

func TestServePprofServesProfiles(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Setenv(pprofEnv, addr)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := servePprof(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/allocs?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /debug/pprof/allocs: status %d, want 200", resp.StatusCode)
	}
}

func TestNetworkCreateFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want engine.NetworkCreateConfig
	}{
		{name: "name only", args: []string{"mynet"}, want: engine.NetworkCreateConfig{Name: "mynet", Driver: "bridge"}},
		{name: "everything", args: []string{"--driver", "bridge", "--subnet", "10.1.0.0/16", "--gateway", "10.1.0.254",
			"--ip-range", "10.1.2.0/24", "--internal", "-o", "com.docker.network.driver.mtu=65520",
			"--opt", "com.docker.network.bridge.enable_icc=false", "--label", "a=1", "--label", "flag", "mynet"},
			want: engine.NetworkCreateConfig{
				Name: "mynet", Driver: "bridge",
				Subnet:   netip.MustParsePrefix("10.1.0.0/16"),
				Gateway:  netip.MustParseAddr("10.1.0.254"),
				IPRange:  netip.MustParsePrefix("10.1.2.0/24"),
				Internal: true,
				Options:  map[string]string{engine.OptionMTU: "65520", engine.OptionICC: "false"},
				Labels:   map[string]string{"a": "1", "flag": ""},
			}},
		{name: "short driver flag", args: []string{"-d", "overlay", "ov"}, want: engine.NetworkCreateConfig{Name: "ov", Driver: "overlay"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eng := &fakeEngine{}
			got := usernet(t, eng, append([]string{"network", "create"}, tc.args...)...)
			if diff := cmp.Diff(result{stdout: fakeID + "\n"}, got, cmp.AllowUnexported(result{})); diff != "" {
				t.Errorf("output mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]engine.NetworkCreateConfig{tc.want}, eng.netCreates, cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})); diff != "" {
				t.Errorf("NetworkCreateConfig mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNetworkCommands(t *testing.T) {
	tests := []struct {
		name string
		eng  *fakeEngine
		args []string
		want result
	}{
		{name: "create refused", args: []string{"network", "create", "bridge"},
			want: result{code: 125, stderr: "usernet: network name \"bridge\" is reserved for a predefined network: choose another name\n"}},
		{name: "create bad subnet", args: []string{"network", "create", "--subnet", "10.0.0.0/33", "n"},
			want: result{code: 125, stderr: "usernet: invalid --subnet \"10.0.0.0/33\": give an IPv4 prefix in CIDR form, such as 172.28.0.0/16\n"}},
		{name: "create two subnets", args: []string{"network", "create", "--subnet", "10.0.0.0/24", "--subnet", "10.0.1.0/24", "n"},
			want: result{code: 125, stderr: "usernet: --subnet given 2 times: usernet networks have one IPv4 subnet\n"}},
		{name: "create bad gateway", args: []string{"network", "create", "--gateway", "gw", "n"},
			want: result{code: 125, stderr: "usernet: invalid --gateway \"gw\": give an IPv4 address such as 172.28.0.1\n"}},
		{name: "create bad option", args: []string{"network", "create", "-o", "mtu", "n"},
			want: result{code: 125, stderr: "usernet: invalid -o \"mtu\": use KEY=VALUE\n"}},
		{name: "create without name", args: []string{"network", "create"},
			want: result{code: 125, stderr: "usernet: \"usernet network create\" takes exactly one network name, got 0 argument(s)\n"}},
		{name: "rm", args: []string{"network", "rm", "mynet"}, want: result{stdout: "mynet\n"}},
		{name: "rm continues past failures", args: []string{"network", "rm", "busy", "nosuch", "mynet"},
			want: result{code: 1, stdout: "mynet\n", stderr: "" +
				"usernet: error while removing network: network busy has active endpoints (name:\"web\" id:\"0123456789ab\")\n" +
				"usernet: no such network: nosuch\n"}},
		{name: "prune forced", eng: &fakeEngine{pruned: []string{"a", "b"}}, args: []string{"network", "prune", "-f"},
			want: result{stdout: "Deleted Networks:\na\nb\n"}},
		{name: "prune nothing", args: []string{"network", "prune", "-f"}, want: result{}},
		{name: "prune declined", eng: &fakeEngine{pruned: []string{"a"}}, args: []string{"network", "prune"},
			want: result{stdout: pruneWarning + "\n"}},
		{name: "ls quiet", args: []string{"network", "ls", "-q"}, want: result{stdout: "ffffffffffff\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eng := tc.eng
			if eng == nil {
				eng = &fakeEngine{}
			}
			got := usernet(t, eng, tc.args...)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(result{})); diff != "" {
				t.Errorf("usernet %v mismatch (-want +got):\n%s", tc.args, diff)
			}
			if tc.name == "prune declined" && eng.prunes != 0 {
				t.Errorf("prune without confirmation asked the daemon to prune")
			}
		})
	}
}
