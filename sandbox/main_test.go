package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The sandbox tests run the product path: an unprivileged user starting
// sandboxes. Run as root (as on CI), each such test re-executes the test
// binary as the user testUser (created if missing) with -test.run naming
// just itself, and reports the child's result.

const (
	// childEnv marks the unprivileged re-execution of the test binary.
	childEnv = "USERNET_SANDBOX_TEST_CHILD"
	testUser = "usernet-test"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == AgentArg {
		AgentMain()
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if leak := leakedReadLoops(); leak != "" {
			fmt.Fprintf(os.Stderr, "sandbox read loops still running after the tests:\n%s\n", leak)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedReadLoops returns the stacks of Sandbox read loops still running:
// every test closes or waits for its sandboxes, so there should be none.
func leakedReadLoops() string {
	buf := make([]byte, 1<<20)
	var leaks []string
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "(*Sandbox).readLoop") {
			leaks = append(leaks, g)
		}
	}
	return strings.Join(leaks, "\n\n")
}

var (
	binOnce sync.Once
	binDir  string // holds a world-readable copy of the test binary
	binPath string
	binErr  error
)

// unprivileged makes the calling test run as an unprivileged user with
// user namespaces available. Run as root, it runs the test again in a
// child process as testUser, reports the child's outcome and returns true:
// the caller must then return at once. Otherwise it skips the test when
// user namespaces are unavailable and returns false.
func unprivileged(t *testing.T) bool {
	t.Helper()
	if os.Getuid() != 0 || os.Getenv(childEnv) == "1" {
		if os.Getuid() == 0 {
			t.Fatal("test child still runs as root")
		}
		requireUserns(t)
		return false
	}
	uid, gid := ensureUser(t)
	// Debian's default is 0666; this machine's is 0600, which no
	// unprivileged user (in any namespace) can open.
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Logf("chmod /dev/net/tun: %v", err)
	}
	bin := testBinary(t)
	cmd := exec.Command(bin, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Dir = filepath.Dir(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	t.Logf("as %s (uid %d):\n%s", testUser, uid, out)
	switch {
	case err != nil:
		t.Fatalf("unprivileged run failed: %v", err)
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name())):
		t.Skip("skipped when unprivileged (see above)")
	case !bytes.Contains(out, []byte("--- PASS: "+t.Name())):
		t.Fatal("unprivileged run did not run the test")
	}
	return true
}

// ensureUser returns testUser's ids, creating the user if needed.
func ensureUser(t *testing.T) (uid, gid uint32) {
	t.Helper()
	u, err := user.Lookup(testUser)
	if err != nil {
		if out, err := exec.Command("useradd", "-m", testUser).CombinedOutput(); err != nil {
			t.Skipf("no unprivileged user to test with: useradd %s: %v: %s", testUser, err, out)
		}
		if u, err = user.Lookup(testUser); err != nil {
			t.Fatalf("look up %s after useradd: %v", testUser, err)
		}
	}
	id, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("ids of %s: %v", testUser, err)
	}
	return uint32(id), uint32(g)
}

// testBinary returns a copy of the test binary that testUser can run (go
// test builds it in a directory only root may enter).
func testBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			binErr = err
			return
		}
		if binDir, err = os.MkdirTemp("", "usernet-sandbox-test-"); err != nil {
			binErr = err
			return
		}
		if err = os.Chmod(binDir, 0o755); err != nil {
			binErr = err
			return
		}
		data, err := os.ReadFile(self)
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(binDir, "sandbox.test")
		binErr = os.WriteFile(binPath, data, 0o755)
	})
	if binErr != nil {
		t.Fatalf("copy test binary: %v", binErr)
	}
	return binPath
}

// requireUserns skips the test unless this process can create a user
// namespace with a network namespace.
func requireUserns(t testing.TB) {
	t.Helper()
	for _, f := range []string{"/proc/sys/user/max_user_namespaces", "/proc/sys/kernel/unprivileged_userns_clone"} {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == "0" {
			t.Skipf("unprivileged user namespaces are disabled: %s is 0", f)
		}
	}
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER | unix.CLONE_NEWNET | unix.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot create a user namespace as uid %d: %v", os.Getuid(), err)
	}
}

// requireTUN skips the test unless /dev/net/tun can be opened.
func requireTUN(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("TAP devices need /dev/net/tun openable by uid %d: %v", os.Getuid(), err)
	}
	f.Close()
}

// pipe returns a pipe whose ends are closed at the end of the test.
func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// logWriter sends a logger's lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// start starts a sandbox that is closed at the end of the test. The
// agent's warnings (a /proc or /sys it could not mount) go to the test log.
func start(t *testing.T, spec Spec) *Sandbox {
	t.Helper()
	if spec.Logger == nil {
		spec.Logger = slog.New(slog.NewTextHandler(logWriter{t}, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start(%q): %v", spec.Args, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// run runs script with sh -c in a sandbox described by spec and returns
// its output and exit status.
func run(t *testing.T, spec Spec, script string) (string, int) {
	t.Helper()
	r, w := pipe(t)
	spec.Args = []string{"/bin/sh", "-c", script}
	spec.Stdout, spec.Stderr = w, w
	s := start(t, spec)
	w.Close()
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read output: %v", err)
	}
	code, err := s.Wait()
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return string(out), code
}

// children returns the pids of pid's children, over all its threads (Go
// forks from any of them).
func children(t *testing.T, pid int) []int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("children of %d: %v", pid, err)
	}
	var pids []int
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "children"))
		if err != nil {
			continue // the thread is gone
		}
		for _, f := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("children of %d: %v", pid, err)
			}
			pids = append(pids, n)
		}
	}
	slices.Sort(pids)
	return pids
}

// ownChildren returns the pids of this process's children.
func ownChildren(t *testing.T) []int {
	t.Helper()
	return children(t, os.Getpid())
}

// statusUID returns the real uid of pid as this process sees it.
func statusUID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			n, err := strconv.Atoi(strings.Fields(rest)[0])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return 0
}

// fields parses "key=value" lines.
func fields(out string) map[string]string {
	m := make(map[string]string)
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimRight(line, "\r"), "="); ok {
			m[k] = v
		}
	}
	return m
}
