package sandbox

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	vswitch "github.com/usernet/usernet/switch"
)

// netipComparable compares netip values with ==.
var netipComparable = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

// connPair returns both ends of a control channel.
func connPair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	a, theirs, err := controlPair()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.FileConn(theirs)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); c.Close() })
	return a, c.(*net.UnixConn)
}

func TestControlRoundTrip(t *testing.T) {
	iface := &Iface{Name: "eth0", MAC: vswitch.MAC{2, 0x42, 0xac, 0x11, 0, 2}, Addr: netip.MustParsePrefix("172.17.0.2/16"), Gateway: netip.MustParseAddr("172.17.0.1"), MTU: 1500}
	tests := []struct {
		name  string
		m     message
		files int
	}{
		{"config", message{Kind: kindConfig, Config: &agentConfig{
			Hostname: "web", Net: NetBridge, Iface: iface,
			ResolvConf: []byte("nameserver 172.17.0.1\n"), Hosts: []byte("172.17.0.2 web\n"),
			Command: execRequest{Args: []string{"sh", "-c", "true"}, Env: []string{"A=b"}, EnvSet: true, Dir: "/srv", TTY: true},
		}}, 3},
		{"exec", message{Kind: kindExec, ID: 4, Exec: &execRequest{Args: []string{"true"}}}, 3},
		{"signal", message{Kind: kindSignal, ID: 4, Signal: int(unix.SIGTERM)}, 0},
		{"started with TAP", message{Kind: kindStarted, Pid: 2, Warnings: []string{"no /sys"}}, 1},
		{"started", message{Kind: kindStarted, ID: 4, Pid: 9}, 0},
		{"failed", message{Kind: kindFailed, ID: 4, Error: &wireError{Msg: "x", Command: true, Name: "x", NotFound: true}}, 0},
		{"exit", message{Kind: kindExit, ID: 4, Code: 137}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := connPair(t)
			var files []*os.File
			for range tt.files {
				_, w := pipe(t)
				files = append(files, w)
			}
			if err := writeMessage(a, &tt.m, files...); err != nil {
				t.Fatalf("writeMessage: %v", err)
			}
			got, gotFiles, err := newReader(b).read()
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			defer closeFiles(gotFiles)
			if diff := cmp.Diff(&tt.m, got, netipComparable); diff != "" {
				t.Errorf("message (-sent +received):\n%s", diff)
			}
			if len(gotFiles) != tt.files {
				t.Errorf("received %d fds, sent %d", len(gotFiles), tt.files)
			}
		})
	}
}

func TestControlEOF(t *testing.T) {
	a, b := connPair(t)
	a.Close()
	if _, _, err := newReader(b).read(); !errors.Is(err, io.EOF) {
		t.Errorf("read after the peer closed = %v, want io.EOF", err)
	}
}

// A message that is rejected must not leak the fds that came with it.
func TestControlRejectClosesFDs(t *testing.T) {
	a, b := connPair(t)
	r, w := pipe(t)
	// An exit message may carry no fds.
	if err := writeMessage(a, &message{Kind: kindExit, ID: 1}, w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, _, err := newReader(b).read(); err == nil || !strings.Contains(err.Error(), "carries 1 fds, want 0") {
		t.Fatalf("read = %v, want the fd count rejected", err)
	}
	// The received copy was the last write end: EOF proves it was closed.
	if n, err := r.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("read from the pipe = %d, %v; want EOF", n, err)
	}
}

func TestControlTooLarge(t *testing.T) {
	a, _ := connPair(t)
	m := &message{Kind: kindExec, ID: 1, Exec: &execRequest{Args: []string{"true"}, Env: []string{strings.Repeat("x", maxMessage)}}}
	if err := writeMessage(a, m); err == nil || !strings.Contains(err.Error(), "over the control channel's 65536") {
		t.Errorf("writeMessage of a huge message = %v, want a size error", err)
	}
}

func TestDecodeMessage(t *testing.T) {
	tests := []struct {
		name string
		in   string
		nfds int
		want string // error substring; "" = valid
	}{
		{"exit", `{"kind":"exit","id":3,"code":1}`, 0, ""},
		{"started main with TAP", `{"kind":"started","pid":2}`, 1, ""},
		{"started main without TAP", `{"kind":"started","pid":2}`, 0, ""},
		{"started exec with fd", `{"kind":"started","id":2,"pid":2}`, 1, "carries 1 fds, want 0"},
		{"started main with TAP and bypass listener", `{"kind":"started","pid":2}`, 2, ""},
		{"started main with 3 fds", `{"kind":"started","pid":2}`, 3, "carries 3 fds, want 0"},
		{"started without pid", `{"kind":"started","id":2}`, 0, "pid 0"},
		{"exec without fds", `{"kind":"exec","id":2,"exec":{"args":["x"]}}`, 0, "carries 0 fds, want 3"},
		{"exec without args", `{"kind":"exec","id":2,"exec":{"args":[]}}`, 3, "without a command"},
		{"config without command", `{"kind":"config","config":{"net":0,"command":{"args":null}}}`, 3, "without a command"},
		{"signal zero", `{"kind":"signal","signal":0}`, 0, "signal 0"},
		{"signal too big", `{"kind":"signal","signal":65}`, 0, "signal 65"},
		{"negative status", `{"kind":"exit","code":-1}`, 0, "status -1"},
		{"failed without error", `{"kind":"failed","id":1}`, 0, "without an error"},
		{"direct", `{"kind":"direct","id":4,"count":32}`, 0, ""},
		{"direct too many", `{"kind":"direct","id":4,"count":33}`, 0, "count 33"},
		{"direct none", `{"kind":"direct","id":4}`, 0, "count 0"},
		{"direct with fd", `{"kind":"direct","id":4,"count":1}`, 1, "carries 1 fds, want 0"},
		{"sockets", `{"kind":"sockets","id":4}`, 32, ""},
		{"sockets without fds", `{"kind":"sockets","id":4}`, 0, "without an ID or sockets"},
		{"sockets without ID", `{"kind":"sockets"}`, 1, "without an ID or sockets"},
		{"unknown kind", `{"kind":"nope"}`, 0, `unknown control message kind "nope"`},
		{"unknown field", `{"kind":"exit","extra":1}`, 0, "unknown field"},
		{"trailing data", `{"kind":"exit"} {}`, 0, "trailing data"},
		{"not JSON", `exit`, 0, "decode control message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeMessage([]byte(tt.in), tt.nfds)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("decodeMessage = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("decodeMessage = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// FuzzDecodeMessage feeds arbitrary packets to the decoder the daemon uses
// on what a (possibly subverted) agent sends. It must not panic, and what
// it accepts must survive re-encoding unchanged.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"kind":"exit","id":3,"code":1}`,
		`{"kind":"started","pid":2,"warnings":["w"]}`,
		`{"kind":"failed","id":1,"error":{"msg":"m","command":true,"errno":2,"op":"stat","path":"/x"}}`,
		`{"kind":"config","config":{"net":0,"iface":{"Name":"eth0","MAC":[2,0,0,0,0,1],"Addr":"10.0.0.2/24","Gateway":"10.0.0.1","MTU":1500},"command":{"args":["x"]}}}`,
		`{"kind":"direct","id":5,"count":16}`,
		`{"kind":"sockets","id":5}`,
	} {
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, b []byte, nfds uint8) {
		m, err := decodeMessage(b, int(nfds%4))
		if err != nil {
			return
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("re-encode accepted message: %v", err)
		}
		m2, err := decodeMessage(again, int(nfds%4))
		if err != nil {
			t.Fatalf("re-encoded message rejected: %v\n%s", err, again)
		}
		if diff := cmp.Diff(m, m2, netipComparable, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip changed the message (-first +second):\n%s", diff)
		}
		if m.Error != nil {
			_ = m.Error.err() // must not panic on any errno
		}
	})
}

func TestWireError(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		command bool
		msg     string
		code    int // 0: not a StartError
		is      error
	}{
		{"not found", &exec.Error{Name: "nosuch", Err: exec.ErrNotFound}, true, `exec: "nosuch": executable file not found in $PATH`, 127, exec.ErrNotFound},
		{"stat", &exec.Error{Name: "/x", Err: &os.PathError{Op: "stat", Path: "/x", Err: syscall.ENOENT}}, true, `exec: "/x": stat /x: no such file or directory`, 127, os.ErrNotExist},
		{"permission", &exec.Error{Name: "/x", Err: syscall.EACCES}, true, `exec: "/x": permission denied`, 126, os.ErrPermission},
		{"fork/exec", &os.PathError{Op: "fork/exec", Path: "/x", Err: syscall.ENOEXEC}, true, "fork/exec /x: exec format error", 126, syscall.ENOEXEC},
		{"other command error", errors.New("odd"), true, "odd", 126, nil},
		{"setup error", errors.New("create TAP eth0: busy"), false, "create TAP eth0: busy", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(toWire(tt.err, tt.command))
			if err != nil {
				t.Fatal(err)
			}
			var w wireError
			if err := json.Unmarshal(b, &w); err != nil {
				t.Fatal(err)
			}
			got := w.err()
			var se *StartError
			isStart := errors.As(got, &se)
			if got.Error() != tt.msg || isStart != (tt.code != 0) || (isStart && se.Code != tt.code) {
				t.Errorf("rebuilt %q (%T), want %q with status %d", got, got, tt.msg, tt.code)
			}
			if tt.is != nil && !errors.Is(got, tt.is) {
				t.Errorf("rebuilt error %q is not %v", got, tt.is)
			}
		})
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"tool": 0o755, "data": 0o644} {
		if err := os.WriteFile(filepath.Join(bin, name), nil, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(bin, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Without PATH, sh is wherever the default PATH finds it first.
	defaultSh := ""
	for _, d := range filepath.SplitList(defaultPath) {
		if executable(filepath.Join(d, "sh")) == nil {
			defaultSh = filepath.Join(d, "sh")
			break
		}
	}
	tests := []struct {
		name string
		file string
		env  []string
		want string
		err  error
	}{
		{"in PATH", "tool", []string{"PATH=/nonexistent:" + bin}, bin + "/tool", nil},
		{"last PATH wins", "tool", []string{"PATH=/nonexistent", "PATH=" + bin}, bin + "/tool", nil},
		{"relative PATH entry is under Dir", "tool", []string{"PATH=bin"}, bin + "/tool", nil},
		{"not executable", "data", []string{"PATH=" + bin}, "", exec.ErrNotFound},
		{"directory", "subdir", []string{"PATH=" + bin}, "", exec.ErrNotFound},
		{"default PATH", "sh", nil, defaultSh, nil},
		{"relative path", "./bin/tool", nil, bin + "/tool", nil},
		{"absolute path", bin + "/tool", nil, bin + "/tool", nil},
		{"absolute not executable", bin + "/data", nil, "", os.ErrPermission},
		{"absolute missing", bin + "/none", nil, "", os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := lookPath(tt.file, tt.env, dir)
			if got != tt.want || (tt.err == nil) != (err == nil) || (tt.err != nil && !errors.Is(err, tt.err)) {
				t.Errorf("lookPath(%q) = %q, %v; want %q, %v", tt.file, got, err, tt.want, tt.err)
			}
		})
	}
}

func TestCheckTAPRejectsOtherFiles(t *testing.T) {
	_, w := pipe(t)
	if err := checkTAP(w, "eth0"); err == nil || !strings.Contains(err.Error(), "TUNGETIFF") {
		t.Errorf("checkTAP(pipe) = %v, want a TUNGETIFF error", err)
	}
}

// A hostile or broken agent (it shares a user namespace with the command)
// must not confuse the daemon: the sandbox is killed and Wait says why.
func TestAgentProtocolViolation(t *testing.T) {
	tests := []struct {
		name  string
		msgs  []message
		files int // attached to the last message
	}{
		{"exit before start", []message{{Kind: kindExit, Code: 0}}, 0},
		{"unknown request", []message{{Kind: kindStarted, Pid: 2}, {Kind: kindExit, ID: 9}}, 0},
		{"request kind from the agent", []message{{Kind: kindSignal, Signal: 9}}, 0},
		{"started twice", []message{{Kind: kindStarted, Pid: 2}, {Kind: kindStarted, Pid: 3}}, 0},
		{"fd for NetNone", []message{{Kind: kindStarted, Pid: 2}}, 1},
		{"garbage", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ours, theirs := connPair(t)
			fake := exec.Command("sleep", "60") // stands in for the agent
			if err := fake.Start(); err != nil {
				t.Skipf("no sleep to stand in for the agent: %v", err)
			}
			s := newSandbox(fake, ours, slog.New(slog.DiscardHandler), NetNone, nil, nil)
			defer s.Close()
			if tt.msgs == nil {
				if _, err := theirs.Write([]byte("{")); err != nil {
					t.Fatal(err)
				}
			}
			for i, m := range tt.msgs {
				var files []*os.File
				if i == len(tt.msgs)-1 {
					for range tt.files {
						_, w := pipe(t)
						files = append(files, w)
					}
				}
				if err := writeMessage(theirs, &m, files...); err != nil {
					t.Fatal(err)
				}
			}
			code, err := s.Wait()
			if code != -1 || err == nil || !strings.Contains(err.Error(), "without reporting") {
				t.Errorf("Wait() = %d, %v; want -1 and an error", code, err)
			}
			if ws, ok := fake.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
				t.Errorf("stand-in agent ended with %v, want killed", fake.ProcessState)
			}
		})
	}
}
