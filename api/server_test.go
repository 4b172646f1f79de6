package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/usernet/usernet/engine"
)

// devNull opens /dev/null for the test.
func devNull(t *testing.T) *os.File {
	t.Helper()
	f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestRunPassesStdioAndReportsExit(t *testing.T) {
	eng := &fakeEngine{runWrite: "hello from the sandbox\n", exitCode: 3}
	c := serve(t, eng)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	req := RunRequest{
		Name: "web", Args: []string{"echo", "hi"}, Env: []string{"A=1"}, Network: "bridge", Wait: true,
		Ports: []PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 8080, ContainerPort: 80, Proto: "tcp"}},
		DNS:   []netip.Addr{netip.MustParseAddr("1.1.1.1")},
	}
	null := devNull(t)
	started, st, err := c.Run(context.Background(), req, []*os.File{null, pw, null})
	pw.Close() // the daemon's and the sandbox's copies are the only writers left
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	defer st.Close()
	if diff := cmp.Diff(RunResponse{ID: strings.Repeat("ab", 32), Warnings: []string{"a warning"}}, started); diff != "" {
		t.Errorf("Run response mismatch (-want +got):\n%s", diff)
	}
	// ReadAll ends only when every copy of the write end is closed: this
	// also checks that the server closed its copy after Run.
	out, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out); got != "hello from the sandbox\n" {
		t.Errorf("sandbox stdout = %q, want %q", got, "hello from the sandbox\n")
	}
	code, err := st.Wait()
	if err != nil || code != 3 {
		t.Errorf("Wait = %d, %v; want 3, nil", code, err)
	}
	want := engine.RunConfig{
		Name: "web", Args: []string{"echo", "hi"}, Env: []string{"A=1"}, Network: "bridge",
		Ports: req.Ports, DNS: req.DNS,
	}
	if diff := cmp.Diff([]engine.RunConfig{want}, eng.runs, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("engine RunConfig mismatch (-want +got):\n%s", diff)
	}
}

func TestRunDetachedHasNoStream(t *testing.T) {
	eng := &fakeEngine{}
	c := serve(t, eng)
	started, st, err := c.Run(context.Background(), RunRequest{Args: []string{"sleep", "1"}, Detach: true}, nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st != nil || started.ID == "" {
		t.Errorf("Run = %+v, %v; want an ID and no stream", started, st)
	}
	if len(eng.runs) != 1 || !eng.runs[0].Detach {
		t.Errorf("engine runs = %+v, want one detached", eng.runs)
	}
}

func TestErrors(t *testing.T) {
	sig99 := syscall.Signal(99)
	tests := []struct {
		name       string
		runErr     error
		call       func(c *Client) error
		wantStatus int
		wantMsg    string
		wantKind   string
		wantIs     error
	}{
		{name: "not found", call: func(c *Client) error { return c.Stop(context.Background(), "nosuch", nil) },
			wantStatus: 404, wantMsg: "not found: no such sandbox: nosuch", wantIs: engine.ErrNotFound},
		{name: "conflict", call: func(c *Client) error { return c.Remove(context.Background(), "running", false) },
			wantStatus: 409, wantMsg: "conflict: cannot remove running sandbox running: stop it first", wantIs: engine.ErrConflict},
		{name: "bad signal", call: func(c *Client) error { return c.Kill(context.Background(), "web", sig99) },
			wantStatus: 400, wantMsg: `invalid argument: signal "99" is not a signal number (1-64)`, wantIs: engine.ErrInvalid},
		{name: "invalid run", runErr: fmt.Errorf("%w: bad name %q", engine.ErrInvalid, "-x"),
			wantStatus: 400, wantMsg: `invalid argument: bad name "-x"`, wantIs: engine.ErrInvalid},
		{name: "internal", runErr: errors.New("disk on fire"),
			wantStatus: 500, wantMsg: "disk on fire"},
		{name: "command not found", runErr: fmt.Errorf("start sandbox x: %w: exec: \"nosuch\": executable file not found in $PATH", engine.ErrCommandNotFound),
			wantStatus: 400, wantMsg: `start sandbox x: command not found: exec: "nosuch": executable file not found in $PATH`, wantKind: KindCommandNotFound},
		{name: "command not executable", runErr: fmt.Errorf("%w: permission denied", engine.ErrCommandNotExecutable),
			wantStatus: 400, wantMsg: "command not executable: permission denied", wantKind: KindCommandNotExecutable},
		{name: "unknown route", call: func(c *Client) error {
			_, err := c.do(context.Background(), c.http, http.MethodGet, "/v2/nothing", nil, nil)
			return err
		}, wantStatus: 404, wantMsg: "no such endpoint: GET /v2/nothing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, &fakeEngine{runErr: tc.runErr})
			call := tc.call
			if call == nil {
				call = func(c *Client) error {
					_, _, err := c.Run(context.Background(), RunRequest{Args: []string{"x"}}, nil)
					return err
				}
			}
			err := call(c)
			var ae *Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %v (%T) is not an *api.Error", err, err)
			}
			if diff := cmp.Diff(&Error{StatusCode: tc.wantStatus, Message: tc.wantMsg, Kind: tc.wantKind}, ae); diff != "" {
				t.Errorf("error mismatch (-want +got):\n%s", diff)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.wantIs)
			}
		})
	}
}

func TestStopTimeout(t *testing.T) {
	sec := func(n int) *int { return &n }
	dur := func(d time.Duration) *time.Duration { return &d }
	tests := []struct {
		name    string
		seconds *int
		want    *time.Duration
	}{
		{name: "default", seconds: nil, want: nil},
		{name: "at once", seconds: sec(0), want: dur(0)},
		{name: "seconds", seconds: sec(3), want: dur(3 * time.Second)},
		{name: "forever", seconds: sec(-1), want: dur(-time.Second)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eng := &fakeEngine{}
			c := serve(t, eng)
			if err := c.Stop(context.Background(), "web", tc.seconds); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if diff := cmp.Diff([]engine.StopOptions{{Timeout: tc.want}}, eng.stops); diff != "" {
				t.Errorf("engine Stop options mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStopTimeoutInvalid(t *testing.T) {
	c := serve(t, &fakeEngine{})
	for _, q := range []string{"soon", "1.5", "99999999999999"} {
		_, err := c.do(context.Background(), c.http, http.MethodPost, "/v1/sandboxes/web/stop", url.Values{"t": {q}}, nil)
		if !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("stop?t=%s: %v, want ErrInvalid", q, err)
		}
	}
}

func TestKillAndRemove(t *testing.T) {
	eng := &fakeEngine{}
	c := serve(t, eng)
	ctx := context.Background()
	if err := c.Kill(ctx, "web", syscall.SIGUSR1); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := c.Remove(ctx, "running", true); err != nil {
		t.Fatalf("Remove force: %v", err)
	}
	// A name with a slash must reach the engine whole, not as a path.
	if err := c.Remove(ctx, "/slash", false); err != nil {
		t.Fatalf("Remove /slash: %v", err)
	}
	if diff := cmp.Diff([]syscall.Signal{syscall.SIGUSR1}, eng.kills); diff != "" {
		t.Errorf("kills mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"running force=true", "/slash force=false"}, eng.removed); diff != "" {
		t.Errorf("removals mismatch (-want +got):\n%s", diff)
	}
}

func TestExec(t *testing.T) {
	tests := []struct {
		name        string
		interactive bool
		wantOut     string
	}{
		{name: "stdin withheld", interactive: false, wantOut: "exec sh -c x stdin=false\n"},
		{name: "interactive", interactive: true, wantOut: "exec sh -c x stdin=true\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proc := &fakeProcess{code: 5, exit: make(chan struct{})}
			eng := &fakeEngine{proc: proc}
			c := serve(t, eng)
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			null := devNull(t)
			req := ExecRequest{Args: []string{"sh", "-c", "x"}, Env: []string{"B=2"}, Interactive: tc.interactive}
			id, st, err := c.Exec(context.Background(), "web", req, []*os.File{null, pw, null})
			pw.Close()
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			defer st.Close()
			if err := c.ExecKill(context.Background(), id, syscall.SIGINT); err != nil {
				t.Fatalf("ExecKill: %v", err)
			}
			close(proc.exit)
			if code, err := st.Wait(); err != nil || code != 5 {
				t.Errorf("Wait = %d, %v; want 5, nil", code, err)
			}
			out, _ := io.ReadAll(pr)
			if string(out) != tc.wantOut {
				t.Errorf("exec output = %q, want %q", out, tc.wantOut)
			}
			if diff := cmp.Diff([]syscall.Signal{syscall.SIGINT}, proc.signals); diff != "" {
				t.Errorf("signals mismatch (-want +got):\n%s", diff)
			}
			wantCfg := engine.ExecConfig{Args: req.Args, Env: req.Env}
			if diff := cmp.Diff([]engine.ExecConfig{wantCfg}, eng.execs); diff != "" {
				t.Errorf("ExecConfig mismatch (-want +got):\n%s", diff)
			}
			// Once the command has exited its ID is forgotten.
			if err := c.ExecKill(context.Background(), id, syscall.SIGINT); !errors.Is(err, engine.ErrNotFound) {
				t.Errorf("ExecKill after exit = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestLogs(t *testing.T) {
	follow := make(chan string)
	eng := &fakeEngine{logs: "line 1\nline 2\n", errLogs: "warning\n", logFollow: follow}
	c := serve(t, eng)
	ctx := context.Background()

	for stream, want := range map[engine.LogStream]string{engine.Stdout: eng.logs, engine.Stderr: eng.errLogs} {
		rc, err := c.Logs(ctx, "web", stream, false)
		if err != nil {
			t.Fatalf("Logs %s: %v", stream, err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if string(b) != want {
			t.Errorf("Logs %s = %q, want %q", stream, b, want)
		}
	}
	if _, err := c.Logs(ctx, "web", "both", false); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("Logs of stream both = %v, want ErrInvalid", err)
	}

	rc, err := c.Logs(ctx, "web", engine.Stdout, true)
	if err != nil {
		t.Fatalf("Logs follow: %v", err)
	}
	defer rc.Close()
	for _, chunk := range []string{"first\n", "second\n"} {
		follow <- chunk
		got := make([]byte, len(chunk))
		if _, err := io.ReadFull(rc, got); err != nil || string(got) != chunk {
			t.Fatalf("followed read = %q, %v; want %q", got, err, chunk)
		}
	}
	close(follow)
	if rest, err := io.ReadAll(rc); err != nil || len(rest) != 0 {
		t.Errorf("after the sandbox exited: %q, %v; want EOF", rest, err)
	}

	if _, err := c.Logs(ctx, "nosuch", engine.Stdout, false); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("Logs(nosuch) = %v, want ErrNotFound", err)
	}
}

func TestQueries(t *testing.T) {
	eng := &fakeEngine{}
	c := serve(t, eng)
	ctx := context.Background()

	for _, all := range []bool{false, true} {
		got, err := c.List(ctx, all)
		if err != nil {
			t.Fatalf("List(%v): %v", all, err)
		}
		if diff := cmp.Diff(eng.List(all), got); diff != "" {
			t.Errorf("List(%v) mismatch (-want +got):\n%s", all, diff)
		}
	}
	insp, err := c.Inspect(ctx, "web")
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	wantInsp, _ := eng.Inspect("web")
	if diff := cmp.Diff(wantInsp, insp); diff != "" {
		t.Errorf("Inspect mismatch (-want +got):\n%s", diff)
	}
	ports, err := c.Port(ctx, "web")
	if err != nil {
		t.Fatalf("Port: %v", err)
	}
	wantPorts, _ := eng.Port("web")
	if diff := cmp.Diff(wantPorts, ports, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("Port mismatch (-want +got):\n%s", diff)
	}
	nets, err := c.Networks(ctx)
	if err != nil {
		t.Fatalf("Networks: %v", err)
	}
	if diff := cmp.Diff(eng.Networks(), nets); diff != "" {
		t.Errorf("Networks mismatch (-want +got):\n%s", diff)
	}
	if _, err := c.NetworkInspect(ctx, "nosuch"); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("NetworkInspect(nosuch) = %v, want ErrNotFound", err)
	}
}

// TestPlainHTTPClient checks that a client that knows nothing of the
// preamble (curl --unix-socket) is served.
func TestPlainHTTPClient(t *testing.T) {
	c := serve(t, &fakeEngine{})
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.Socket())
		},
	}}
	resp, err := hc.Get("http://localhost/v1/ping")
	if err != nil {
		t.Fatalf("GET /v1/ping: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "OK" {
		t.Errorf("GET /v1/ping = %d %q, want 200 OK", resp.StatusCode, body)
	}
}

// TestShutdownEndsWaits checks that a client waiting for a command hears
// that the daemon is going away instead of hanging.
func TestShutdownEndsWaits(t *testing.T) {
	before := runtime.NumGoroutine()
	eng := &fakeEngine{exited: make(chan struct{})} // never exits
	path := filepath.Join(t.TempDir(), "usernet.sock")
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(eng, nil)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	c := NewClient(path)
	defer c.Close()
	_, st, err := c.Run(context.Background(), RunRequest{Args: []string{"sleep"}, Wait: true}, nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := st.Wait(); err == nil || err.Error() != errShutdown.Error() {
		t.Errorf("Wait during shutdown = %v, want %q", err, errShutdown)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after shutdown: %v, want it removed", err)
	}
	st.Close()
	c.Close()
	// Every goroutine of the server and of the client's connections ends;
	// they need a moment to notice their connections closed.
	for i := 0; runtime.NumGoroutine() > before; i++ {
		if i == 500 {
			t.Fatalf("%d goroutines left running, %d before the server started", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWait(t *testing.T) {
	c := serve(t, &fakeEngine{exitCode: 9})
	if code, err := c.Wait(context.Background(), "web"); err != nil || code != 9 {
		t.Errorf("Wait(web) = %d, %v; want 9, nil", code, err)
	}
	if _, err := c.Wait(context.Background(), "nosuch"); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("Wait(nosuch) = %v, want ErrNotFound", err)
	}
}

func TestNetworkCreateRemovePrune(t *testing.T) {
	eng := &fakeEngine{}
	c := serve(t, eng)
	ctx := context.Background()
	req := NetworkCreateRequest{
		Name: "mynet", Driver: "bridge",
		Subnet:   netip.MustParsePrefix("10.5.0.0/16"),
		Gateway:  netip.MustParseAddr("10.5.0.254"),
		IPRange:  netip.MustParsePrefix("10.5.1.0/24"),
		Internal: true,
		Options:  map[string]string{engine.OptionMTU: "65520"},
		Labels:   map[string]string{"team": "net"},
	}
	id, err := c.NetworkCreate(ctx, req)
	if err != nil || id != strings.Repeat("cd", 32) {
		t.Fatalf("NetworkCreate = %q, %v", id, err)
	}
	// A request without addresses carries zero values, not parse errors.
	if _, err := c.NetworkCreate(ctx, NetworkCreateRequest{Name: "plain"}); err != nil {
		t.Fatalf("NetworkCreate(plain) = %v", err)
	}
	want := []engine.NetworkCreateConfig{req.config(), {Name: "plain"}}
	if diff := cmp.Diff(want, eng.netCreates, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("engine got (-want +got):\n%s", diff)
	}
	if _, err := c.NetworkCreate(ctx, NetworkCreateRequest{Name: "dup"}); !errors.Is(err, engine.ErrConflict) || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("NetworkCreate(dup) = %v, want a conflict saying it exists", err)
	}

	tests := []struct {
		name    string
		wantErr error
	}{
		{"mynet", nil},
		{"bridge", engine.ErrInvalid},
		{"nosuch", engine.ErrNotFound},
	}
	for _, tc := range tests {
		if err := c.NetworkRemove(ctx, tc.name); !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
			t.Errorf("NetworkRemove(%s) = %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	if diff := cmp.Diff([]string{"mynet"}, eng.netRemoved); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	names, err := c.NetworkPrune(ctx)
	if err != nil || !cmp.Equal(names, []string{"a", "b"}) {
		t.Errorf("NetworkPrune = %v, %v; want [a b]", names, err)
	}
}
