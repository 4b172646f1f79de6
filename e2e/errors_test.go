package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// anyFailure in a test case accepts any non-zero exit status.
const anyFailure = -1000

func describeStatus(code int) string {
	if code == anyFailure {
		return "non-zero"
	}
	return strconv.Itoa(code)
}

// TestBadInput checks that every bad input gets one clear line on stderr, a
// non-zero status (125 when `usernet run` itself fails, as with `docker run`;
// 127 for a command that does not exist) and changes nothing.
func TestBadInput(t *testing.T) {
	h := env(t)

	// Fixtures some cases need: a port held by the test, a socket nobody
	// answers on, a file that is not a socket.
	busy, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)

	deadSock := filepath.Join(h.user.runDir, "dead.sock")
	l, err := net.Listen("unix", deadSock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	notSock := filepath.Join(h.user.runDir, "not-a-socket")
	if err := os.WriteFile(notSock, []byte("plain file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{deadSock, notSock} {
		if err := os.Chown(p, int(h.user.uid), int(h.user.gid)); err != nil {
			t.Fatal(err)
		}
	}
	defer os.Remove(deadSock)
	defer os.Remove(notSock)

	tests := []struct {
		name    string
		args    []string
		env     []string
		code    int    // anyFailure: any non-zero status
		mention string // the error names the culprit
	}{
		{name: "unknown flag", args: []string{"run", "--no-such-flag", "sleep", "1"}, code: 125, mention: "no-such-flag"},
		{name: "unknown subcommand", args: []string{"frobnicate"}, code: anyFailure, mention: "frobnicate"},
		{name: "missing command", args: []string{"run"}, code: 125},
		{name: "missing command detached", args: []string{"run", "-d", "--name", "nocmd"}, code: 125},
		{name: "malformed -p container port", args: []string{"run", "-d", "-p", "8080:http", "sleep", "1"}, code: 125, mention: "http"},
		{name: "malformed -p host port range", args: []string{"run", "-d", "-p", "70000:80", "sleep", "1"}, code: 125, mention: "70000"},
		{name: "malformed -p protocol", args: []string{"run", "-d", "-p", "8080:80/sctpx", "sleep", "1"}, code: 125, mention: "sctpx"},
		{name: "malformed --expose", args: []string{"run", "-d", "-P", "--expose", "eighty", "sleep", "1"}, code: 125, mention: "eighty"},
		{name: "malformed --add-host", args: []string{"run", "-d", "--add-host", "nocolon", "sleep", "1"}, code: 125, mention: "nocolon"},
		{name: "malformed --dns", args: []string{"run", "-d", "--dns", "not-an-ip", "sleep", "1"}, code: 125, mention: "not-an-ip"},
		{name: "malformed --name", args: []string{"run", "-d", "--name", "bad/name", "sleep", "1"}, code: 125, mention: "bad/name"},
		{name: "unknown network", args: []string{"run", "-d", "--network", "nosuchnet", "sleep", "1"}, code: 125, mention: "nosuchnet"},
		{name: "host port in use", args: []string{"run", "-d", "-p", busyPort + ":80", "sleep", "infinity"}, code: 125, mention: busyPort},
		{name: "unknown name inspect", args: []string{"inspect", "nosuch-e2e"}, code: anyFailure, mention: "nosuch-e2e"},
		{name: "unknown name stop", args: []string{"stop", "nosuch-e2e"}, code: anyFailure, mention: "nosuch-e2e"},
		{name: "unknown name rm", args: []string{"rm", "-f", "nosuch-e2e"}, code: anyFailure, mention: "nosuch-e2e"},
		{name: "unknown name logs", args: []string{"logs", "nosuch-e2e"}, code: anyFailure, mention: "nosuch-e2e"},
		{name: "unknown name exec", args: []string{"exec", "nosuch-e2e", "true"}, code: anyFailure, mention: "nosuch-e2e"},
		{name: "unknown name port", args: []string{"port", "nosuch-e2e"}, code: anyFailure, mention: "nosuch-e2e"},
		{name: "unknown network inspect", args: []string{"network", "inspect", "nosuchnet"}, code: anyFailure, mention: "nosuchnet"},
		{name: "command does not exist by path", args: []string{"run", "--", "/nonexistent/e2e-cmd"}, code: 127, mention: "/nonexistent/e2e-cmd"},
		{name: "command does not exist in PATH", args: []string{"run", "--", "no-such-command-e2e"}, code: 127, mention: "no-such-command-e2e"},
		{name: "daemon socket dead", args: []string{"ps", "-a"}, env: []string{"USERNET_SOCKET=" + deadSock}, code: anyFailure, mention: deadSock},
		{name: "daemon socket dead run", args: []string{"run", "--rm", "true"}, env: []string{"USERNET_SOCKET=" + deadSock}, code: 125, mention: deadSock},
		{name: "daemon socket not a socket", args: []string{"ps", "-a"}, env: []string{"USERNET_SOCKET=" + notSock}, code: anyFailure, mention: notSock},
		{name: "daemon socket not a socket run", args: []string{"run", "--rm", "true"}, env: []string{"USERNET_SOCKET=" + notSock}, code: 125, mention: notSock},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.fresh(t)
			before := h.psAll(t)
			daemons := len(h.daemonPIDs())
			r := h.do(t, call{args: tt.args, env: tt.env})
			if tt.code == anyFailure && r.code == 0 || tt.code != anyFailure && r.code != tt.code {
				t.Errorf("status %d, want %s: %s", r.code, describeStatus(tt.code), r)
			}
			if tt.args[0] == "inspect" || tt.args[0] == "network" && tt.args[1] == "inspect" {
				// Docker prints an empty JSON array for names it did not find.
				if out := strings.TrimSpace(r.stdout); out == "[]" {
					r.stdout = ""
				}
			}
			if err := oneLineError(r); err != nil {
				t.Errorf("%v: %s", err, r)
			}
			if tt.mention != "" && !strings.Contains(r.stderr, tt.mention) {
				t.Errorf("the error does not name %q: %s", tt.mention, r)
			}
			if after := h.psAll(t); !slices.Equal(before, after) {
				t.Errorf("ps -a changed from %v to %v", before, after)
			}
			if n := len(h.daemonPIDs()); n != daemons {
				t.Errorf("%d usernet daemons running after the command, %d before", n, daemons)
			}
			if tt.mention == busyPort {
				if _, err := net.Dial("tcp4", "127.0.0.1:"+busyPort); err != nil {
					t.Errorf("the test's own listener on %s stopped answering: %v", busyPort, err)
				}
			}
		})
	}
	if t.Failed() {
		// A second daemon started on a bad socket path would outlive the test.
		if pids := h.daemonPIDs(); len(pids) > 1 {
			t.Errorf("stray daemons %v", pids)
			fmt.Fprintln(os.Stderr, "e2e: stopping stray daemons")
			if err := h.stopDaemon(); err != nil {
				t.Error(err)
			}
		}
	}
}
