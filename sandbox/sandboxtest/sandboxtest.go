// Package sandboxtest runs tests the way usernet itself runs: as an
// unprivileged user who creates user and network namespaces. Tests of the
// packages that start sandboxes (sandbox, engine) call Unprivileged first.
// Run as root, as CI runs them, such a test re-executes the test binary as
// User with -test.run naming just itself and reports the child's outcome;
// run unprivileged, it checks that user namespaces work and goes on.
package sandboxtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// User is the unprivileged account tests run as; Unprivileged creates it
// (useradd -m) when it is missing.
const User = "usernet-test"

// childEnv marks the unprivileged re-execution of a test binary.
const childEnv = "USERNET_TEST_UNPRIVILEGED_CHILD"

// The copy of the test binary that User can run, made once per process:
// go test builds it in a directory only root may enter.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// Main runs the tests and removes the test binary's copy. Call it from
// TestMain: os.Exit(sandboxtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	return code
}

// Unprivileged makes the calling test run unprivileged. As root it runs the
// test again in a child process as User, reports the child's outcome and
// returns true: the caller must then return at once. Otherwise it skips
// the test unless user namespaces work, and returns false.
func Unprivileged(t *testing.T) bool {
	t.Helper()
	if os.Getuid() != 0 || os.Getenv(childEnv) == "1" {
		if os.Getuid() == 0 {
			t.Fatal("test child still runs as root")
		}
		RequireUserns(t)
		return false
	}
	uid, gid := ensureUser(t)
	// Distributions ship /dev/net/tun 0666; these machines have 0600,
	// which no unprivileged user (in any namespace) can open.
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Logf("chmod /dev/net/tun: %v", err)
	}
	bin := testBinary(t)
	cmd := exec.Command(bin, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Dir = filepath.Dir(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	t.Logf("as %s (uid %d):\n%s", User, uid, out)
	switch {
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name())):
		t.Skip("skipped when unprivileged (see above)")
	case err != nil:
		t.Fatalf("unprivileged run failed: %v", err)
	case !bytes.Contains(out, []byte("--- PASS: "+t.Name())):
		t.Fatal("unprivileged run did not run the test")
	}
	return true
}

// ensureUser returns User's ids, creating the user if needed.
func ensureUser(t *testing.T) (uid, gid uint32) {
	t.Helper()
	u, err := user.Lookup(User)
	if err != nil {
		if out, err := exec.Command("useradd", "-m", User).CombinedOutput(); err != nil {
			t.Skipf("no unprivileged user to test with: useradd %s: %v: %s", User, err, out)
		}
		if u, err = user.Lookup(User); err != nil {
			t.Fatalf("look up %s after useradd: %v", User, err)
		}
	}
	id, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("ids of %s: %v", User, err)
	}
	return uint32(id), uint32(g)
}

// testBinary returns the copy of the test binary that User can run.
func testBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			binErr = err
			return
		}
		if binDir, err = os.MkdirTemp("", "usernet-test-"); err != nil {
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
		binPath = filepath.Join(binDir, filepath.Base(self))
		binErr = os.WriteFile(binPath, data, 0o755)
	})
	if binErr != nil {
		t.Fatalf("copy test binary: %v", binErr)
	}
	return binPath
}

// RequireUserns skips the test unless this process can create a user
// namespace with a network namespace.
func RequireUserns(t testing.TB) {
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

// RequireTUN skips the test unless /dev/net/tun can be opened.
func RequireTUN(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("TAP devices need /dev/net/tun openable by uid %d (chmod 0666 /dev/net/tun): %v", os.Getuid(), err)
	}
	f.Close()
}

// InNetns runs fn on an OS thread switched into the network namespace at
// path (for example /run/netns/NAME, which `ip netns add` makes), as root.
// Files and sockets fn opens stay bound to that namespace: a TAP created
// there, or a listener. fn must not start goroutines, which would run in
// whatever namespace their thread has. If the thread cannot be switched
// back it stays locked, so the Go runtime ends it with the goroutine
// rather than reuse it (NETSTACK.md R5(c)).
func InNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", path, err)
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: setns: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns %s: setns back: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
