package e2e

// The harness: TestMain builds the binary and sets the stage once (test user,
// /dev/net/tun, the "internet" namespace), every test then drives usernet as
// that user through the helpers below, and TestMain tears everything down and
// fails the run if anything the tests started is still alive.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/sandbox/sandboxtest"
)

const (
	testUser = "usernet-e2e"

	// The "internet": a network namespace reachable from the host through a
	// veth pair. Sandboxes reach it only through usernet's NAT, so what its
	// servers see as the peer address tells whether NAT used host sockets.
	inetNS     = "usernet-e2e-inet"
	vethHost   = "ue2e-h"
	vethPeer   = "ue2e-n"
	inetHostIP = "198.18.0.1"
	inetPeerIP = "198.18.0.2"
	// HTTP on inetPeerIP:inetHTTP: GET / answers with the peer address it
	// sees, GET /blob sends testBlob, POST /sink answers "LENGTH SHA256".
	inetHTTP = 8080
	// DNS on inetPeerIP:53 answers probeName with probeAddr, whoamiName TXT
	// with the peer address it sees (the UDP check), NXDOMAIN otherwise.
	probeName  = "probe.e2e.test."
	probeAddr  = "198.18.0.77"
	whoamiName = "whoami.e2e.test."

	// Defaults of usernet's default bridge network (Docker's).
	bridgeSubnet  = "172.17.0.0/16"
	bridgeGateway = "172.17.0.1"

	cmdTimeout = 60 * time.Second
	userPath   = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// aptPackages are what the tools below come from on Debian.
const aptPackages = "iproute2 iputils-ping dnsutils curl netcat-openbsd python3 util-linux bsdutils libc-bin"

// tools are the programs the tests run inside sandboxes or as the test user;
// absolute paths so that a root-only shim (pyenv under /root) never answers.
var tools = []string{"/usr/bin/python3", "ping", "curl", "dig", "ip", "script", "getent", "unshare", "sleep", "cat", "tty", "hostname"}

var (
	// stage is the environment TestMain set up; nil when skipReason is set.
	stage *harness
	// skipReason says why the tests cannot run (not root).
	skipReason string
)

// account is a unix user the harness runs commands as, with its own
// environment directories.
type account struct {
	name     string
	uid, gid uint32
	home     string
	runDir   string // XDG_RUNTIME_DIR, 0700
	dataDir  string // XDG_DATA_HOME
}

// harness is the stage every test uses. It is used from one test at a time
// (the tests do not run in parallel: they share one daemon and one address
// pool and assert Docker's deterministic address order).
type harness struct {
	root   string // temp dir holding everything the harness creates
	binDir string
	bin    string // the built usernet binary
	user   account
	nobody *account // a second user, made on first use
	inet   *internet
	lock   *os.File // held for the whole run; see lockRun
}

func TestMain(m *testing.M) {
	os.Exit(mainWithStage(m))
}

func mainWithStage(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipReason = "the e2e tests need root to create the user " + testUser +
			", open /dev/net/tun to it and build a test network namespace; run `go test ./e2e/` as root (CI does)"
		return m.Run()
	}
	h, err := setUp()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: setting up: %v\n", err)
		if h != nil {
			if terr := h.tearDown(); terr != nil {
				fmt.Fprintf(os.Stderr, "e2e: tearing down: %v\n", terr)
			}
		}
		return 1
	}
	stage = h
	code := m.Run()
	if err := h.checkDaemonLog(code != 0); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		code = 1
	}
	if err := h.tearDown(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: tearing down: %v\n", err)
		code = 1
	}
	return code
}

// env returns the stage, skipping the test when there is none.
func env(t *testing.T) *harness {
	t.Helper()
	if stage == nil {
		t.Skip(skipReason)
	}
	return stage
}

func setUp() (*harness, error) {
	var missing []string
	for _, tool := range tools {
		if filepath.IsAbs(tool) {
			if _, err := os.Stat(tool); err != nil {
				missing = append(missing, tool)
			}
			continue
		}
		if findInPath(tool) == "" {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing tools %v: apt-get install -y %s", missing, aptPackages)
	}

	// The user, the namespace and the interface names are fixed, so two
	// runs on one machine would kill each other's daemons: take turns.
	lock, err := lockRun(15 * time.Minute)
	if err != nil {
		return nil, err
	}

	root, err := os.MkdirTemp("", "usernet-e2e-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	h := &harness{root: root, binDir: filepath.Join(root, "bin"), lock: lock}
	if err := os.Chmod(root, 0o755); err != nil {
		return h, fmt.Errorf("chmod %s: %w", root, err)
	}
	if err := os.Mkdir(h.binDir, 0o755); err != nil {
		return h, fmt.Errorf("bin dir: %w", err)
	}
	if h.bin, err = build(h.binDir); err != nil {
		return h, err
	}

	u, err := ensureUser(testUser)
	if err != nil {
		return h, err
	}
	if h.user, err = h.newAccount(u, "user"); err != nil {
		return h, err
	}
	// Processes of the test user left by an earlier, interrupted run would
	// hold the state the tests are about to assert on.
	for _, p := range processesOf(h.user.uid) {
		fmt.Fprintf(os.Stderr, "e2e: killing leftover process %d of %s: %q\n", p.pid, testUser, p.cmdline)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}

	// The sandbox agent opens /dev/net/tun as (mapped) root of a user
	// namespace, which is the test user to the device node's permission check.
	// The mode is left at 0666 afterwards: other packages' tests, which go
	// test may run at the same time, rely on it too.
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		return h, fmt.Errorf("chmod /dev/net/tun: %w", err)
	}

	// Unprivileged user namespaces are the one kernel feature usernet needs.
	if r := h.runAs(h.user, []string{"unshare", "-Urn", "true"}, nil, nil, 10*time.Second); r.err != nil || r.code != 0 {
		return h, fmt.Errorf("the test user cannot create user namespaces (unshare -Urn true: %s): enable kernel.unprivileged_userns_clone / user.max_user_namespaces", r)
	}

	if h.inet, err = startInternet(); err != nil {
		return h, err
	}
	return h, nil
}

// checkDaemonLog fails the run if the daemon's log (where the daemon started
// on demand writes its stderr) shows a data race (USERNET_E2E_RACE=1) or a
// panic; with dump it prints the log's tail for a failed run's reader.
func (h *harness) checkDaemonLog(dump bool) error {
	path := filepath.Join(h.user.dataDir, "usernet", "daemon.log")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil // no daemon ever started; the tests said why
	}
	log := string(b)
	var bad []string
	for _, sign := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(log, sign) {
			bad = append(bad, sign)
		}
	}
	if dump || len(bad) > 0 {
		lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
		if len(bad) == 0 && len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		fmt.Fprintf(os.Stderr, "e2e: %s:\n%s\n", path, strings.Join(lines, "\n"))
	}
	if len(bad) > 0 {
		return fmt.Errorf("the daemon's log %s shows %v", path, bad)
	}
	return nil
}

// lockRun takes an exclusive flock that serializes e2e runs on this machine,
// waiting at most wait for another run to finish.
func lockRun(wait time.Duration) (*os.File, error) {
	const path = "/run/lock/usernet-e2e.lock"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(time.Second) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s (another e2e run?): %w", path, err)
		}
	}
}

// build compiles cmd/usernet into dir with `make build`, and checks that
// the result is the static binary make build promises; USERNET_E2E_RACE=1
// (-race) and USERNET_E2E_TAGS=a,b (-tags a,b) build with go build instead.
// USERNET_E2E_BIN=/path instead copies that binary (to test a build made
// elsewhere); the copy is what the test user runs.
func build(dir string) (string, error) {
	if prebuilt := os.Getenv("USERNET_E2E_BIN"); prebuilt != "" {
		b, err := os.ReadFile(prebuilt)
		if err != nil {
			return "", fmt.Errorf("USERNET_E2E_BIN: %w", err)
		}
		bin := filepath.Join(dir, "usernet")
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			return "", fmt.Errorf("copy USERNET_E2E_BIN: %w", err)
		}
		return bin, nil
	}
	modRoot, err := filepath.Abs("..")
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	if _, err := os.Stat(filepath.Join(modRoot, "go.mod")); err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	bin := filepath.Join(dir, "usernet")
	race, tags := os.Getenv("USERNET_E2E_RACE") != "", os.Getenv("USERNET_E2E_TAGS")
	// Normally the binary is what the README's `make build` makes, so the
	// tests run what users run; -race and -tags need go build's flags.
	name, args := "make", []string{"-s", "build", "BIN=" + bin}
	if race || tags != "" {
		name, args = "go", []string{"build", "-o", bin}
		if race {
			args = append(args, "-race")
		}
		if tags != "" {
			args = append(args, "-tags", tags)
		}
		args = append(args, "./cmd/usernet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = modRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	if name == "make" {
		if err := checkStatic(bin); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		return "", fmt.Errorf("chmod %s: %w", bin, err)
	}
	return bin, nil
}

// checkStatic fails for an ELF file that asks for a dynamic loader.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("read the built binary: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("make build made a dynamically linked %s; it should build with CGO_ENABLED=0 (Makefile)", bin)
		}
	}
	return nil
}

func ensureUser(name string) (*user.User, error) {
	if u, err := user.Lookup(name); err == nil {
		return u, nil
	}
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("useradd %s: %w: %s", name, err, out)
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	return u, nil
}

// newAccount makes the environment directories for u under the harness root.
func (h *harness) newAccount(u *user.User, dir string) (account, error) {
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return account{}, fmt.Errorf("uid of %s: %w", u.Username, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return account{}, fmt.Errorf("gid of %s: %w", u.Username, err)
	}
	a := account{name: u.Username, uid: uint32(uid), gid: uint32(gid)}
	base := filepath.Join(h.root, dir)
	a.home, a.runDir, a.dataDir = filepath.Join(base, "home"), filepath.Join(base, "run"), filepath.Join(base, "data")
	for _, d := range []string{base, a.home, a.runDir, a.dataDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return account{}, fmt.Errorf("mkdir: %w", err)
		}
		if err := os.Chown(d, int(a.uid), int(a.gid)); err != nil {
			return account{}, fmt.Errorf("chown: %w", err)
		}
	}
	return a, nil
}

// other returns a second unprivileged user (nobody), for permission checks.
func (h *harness) other(t *testing.T) account {
	t.Helper()
	if h.nobody == nil {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("user nobody: %v", err)
		}
		a, err := h.newAccount(u, "nobody")
		if err != nil {
			t.Fatal(err)
		}
		h.nobody = &a
	}
	return *h.nobody
}

func (h *harness) tearDown() error {
	var errs []error
	if h.bin != "" && h.user.uid != 0 {
		if err := h.removeAllSandboxes(); err != nil {
			errs = append(errs, err)
		}
		if err := h.stopDaemon(); err != nil {
			errs = append(errs, err)
		}
		for _, a := range []*account{&h.user, h.nobody} {
			if a == nil {
				continue
			}
			if left := processesOf(a.uid); len(left) > 0 {
				for _, p := range left {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
				errs = append(errs, fmt.Errorf("processes of %s left after the daemon stopped (killed now): %v", a.name, left))
			}
		}
	}
	if h.inet != nil {
		h.inet.close()
	}
	_ = exec.Command("ip", "netns", "del", inetNS).Run()
	_ = exec.Command("ip", "link", "del", vethHost).Run()
	if h.root != "" {
		if err := os.RemoveAll(h.root); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", h.root, err))
		}
	}
	if h.lock != nil {
		h.lock.Close() // releases the flock
	}
	return errors.Join(errs...)
}

// removeAllSandboxes is `usernet rm -f` of everything `ps -a -q` lists, for
// teardown; it starts no daemon if none is running.
func (h *harness) removeAllSandboxes() error {
	if len(h.daemonPIDs()) == 0 {
		return nil
	}
	r := h.runAs(h.user, []string{h.bin, "ps", "-a", "-q"}, nil, nil, cmdTimeout)
	if r.err != nil || r.code != 0 {
		return fmt.Errorf("usernet ps -a -q: %s", r)
	}
	ids := strings.Fields(r.stdout)
	if len(ids) == 0 {
		return nil
	}
	r = h.runAs(h.user, append([]string{h.bin, "rm", "-f"}, ids...), nil, nil, cmdTimeout)
	if r.err != nil || r.code != 0 {
		return fmt.Errorf("usernet rm -f: %s", r)
	}
	return nil
}

// result is what one command did.
type result struct {
	argv           []string
	stdout, stderr string
	code           int   // exit status; -1 when killed by a signal
	err            error // the command could not run, timed out or left its pipes open
}

func (r result) String() string {
	s := fmt.Sprintf("`%s` exited %d", strings.Join(r.argv, " "), r.code)
	if r.err != nil {
		s += fmt.Sprintf(" (%v)", r.err)
	}
	return s + fmt.Sprintf("\n--- stdout:\n%s--- stderr:\n%s---", r.stdout, r.stderr)
}

// runAs runs argv as a, with a's environment plus extraEnv (later entries
// win), in its own process group so a timeout kills everything it started.
func (h *harness) runAs(a account, argv []string, extraEnv []string, stdin io.Reader, timeout time.Duration) result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{
		"HOME=" + a.home,
		"USER=" + a.name,
		"LOGNAME=" + a.name,
		"PATH=" + h.binDir + ":" + userPath,
		"XDG_RUNTIME_DIR=" + a.runDir,
		"XDG_DATA_HOME=" + a.dataDir,
		"SHELL=/bin/sh",
		"LANG=C.UTF-8",
		"TERM=xterm",
	}, extraEnv...)
	cmd.Dir = a.home
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: []uint32{}},
		Setpgid:    true,
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A command that exits while a child it started (a daemon started on
	// demand) still holds its stdout or stderr would hang `usernet ps | cat`.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := result{argv: argv, stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.code, r.err = -1, fmt.Errorf("timed out after %v", timeout)
	case errors.Is(err, exec.ErrWaitDelay):
		r.err = errors.New("exited but a process it started kept its stdout/stderr open")
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	case err != nil:
		r.code, r.err = -1, err
	}
	return r
}

// call describes one usernet invocation by the test user.
type call struct {
	args    []string // after "usernet"
	env     []string
	stdin   io.Reader
	timeout time.Duration
}

// do runs usernet as the test user; it fails the test only when the command
// could not run or hung, never on its exit status.
func (h *harness) do(t *testing.T, c call) result {
	t.Helper()
	if c.timeout == 0 {
		c.timeout = cmdTimeout
	}
	r := h.runAs(h.user, append([]string{h.bin}, c.args...), c.env, c.stdin, c.timeout)
	r.argv[0] = "usernet"
	if r.err != nil {
		t.Fatalf("%s", r)
	}
	return r
}

// usernet runs `usernet args...` as the test user.
func (h *harness) usernet(t *testing.T, args ...string) result {
	t.Helper()
	return h.do(t, call{args: args})
}

// ok runs `usernet args...`, requires exit status 0 and returns stdout.
func (h *harness) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := h.usernet(t, args...)
	if r.code != 0 {
		t.Fatalf("%s", r)
	}
	return r.stdout
}

// shell runs argv (not usernet) as the test user.
func (h *harness) shell(t *testing.T, argv ...string) result {
	t.Helper()
	r := h.runAs(h.user, argv, nil, nil, cmdTimeout)
	if r.err != nil {
		t.Fatalf("%s", r)
	}
	return r
}

// runDetached starts `usernet run -d args...` and returns the ID it prints.
func (h *harness) runDetached(t *testing.T, args ...string) string {
	t.Helper()
	out := h.ok(t, append([]string{"run", "-d"}, args...)...)
	id := strings.TrimSpace(out)
	if !isFullID(id) {
		t.Fatalf("usernet run -d %s printed %q, want the sandbox's 64-hex-digit ID on one line", strings.Join(args, " "), out)
	}
	return id
}

func isFullID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

// psAll returns what `usernet ps -a -q` lists.
func (h *harness) psAll(t *testing.T) []string {
	t.Helper()
	return strings.Fields(h.ok(t, "ps", "-a", "-q"))
}

// fresh starts a test from an empty daemon and removes whatever the test
// created when it ends, so tests can rely on Docker's address order (.2 first).
func (h *harness) fresh(t *testing.T) {
	t.Helper()
	if ids := h.psAll(t); len(ids) > 0 {
		t.Logf("removing sandboxes left by an earlier test: %v", ids)
		h.ok(t, append([]string{"rm", "-f"}, ids...)...)
	}
	t.Cleanup(func() {
		ids := h.psAll(t)
		if len(ids) == 0 {
			return
		}
		h.ok(t, append([]string{"rm", "-f"}, ids...)...)
		if left := h.psAll(t); len(left) > 0 {
			t.Errorf("usernet rm -f %v left %v in ps -a", ids, left)
		}
		// Every sandbox process (agent, command, exec'd ones) must be gone.
		var left []process
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			left = h.nonDaemonProcesses()
			if len(left) == 0 || time.Now().After(deadline) {
				break
			}
		}
		if len(left) > 0 {
			t.Errorf("processes of %s alive 10s after usernet rm -f of every sandbox: %v", testUser, left)
		}
	})
}

// container is the part of `usernet inspect` output the tests read (Docker's shape).
type container struct {
	ID    string `json:"Id"`
	Name  string
	State struct {
		Status   string
		Running  bool
		Pid      int
		ExitCode int
	}
	Config struct {
		Hostname string
	}
	NetworkSettings struct {
		IPAddress   string
		IPPrefixLen int
		MacAddress  string
		Gateway     string
		Ports       map[string][]struct {
			HostIP   string `json:"HostIp"`
			HostPort string
		}
		Networks map[string]struct {
			IPAddress   string
			IPPrefixLen int
			MacAddress  string
			Gateway     string
		}
	}
}

// inspect returns `usernet inspect ref`, which must describe exactly one sandbox.
func (h *harness) inspect(t *testing.T, ref string) container {
	t.Helper()
	out := h.ok(t, "inspect", ref)
	var cs []container
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatalf("usernet inspect %s: not a JSON array of objects: %v\n%s", ref, err, out)
	}
	if len(cs) != 1 {
		t.Fatalf("usernet inspect %s: %d objects, want 1\n%s", ref, len(cs), out)
	}
	return cs[0]
}

// ipOf returns the sandbox's address on the default bridge.
func (h *harness) ipOf(t *testing.T, ref string) string {
	t.Helper()
	c := h.inspect(t, ref)
	if c.NetworkSettings.IPAddress == "" {
		t.Fatalf("usernet inspect %s: NetworkSettings.IPAddress is empty", ref)
	}
	return c.NetworkSettings.IPAddress
}

// eventually polls f every 100ms until it returns nil or d passes; then the
// test fails with f's last error.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePort returns a port that TCP and UDP can bind on all addresses at the
// moment. It stays below the kernel's ephemeral range (32768 up), where busy
// neighbours' outgoing connections would take ports between this check and
// usernet's bind.
func freePort(t *testing.T) int {
	t.Helper()
	for range 200 {
		p := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", p))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", p))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return p
	}
	t.Fatal("no free port in 20000-31999")
	return 0
}

// portIsFree reports (as an error) whether 0.0.0.0:port can be bound.
func portIsFree(port int) error {
	l, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return err
	}
	return l.Close()
}

// expectPage waits up to 20 s for url to answer with a page containing
// token; what says when (e.g. "from the host"), for the failure message.
func expectPage(t *testing.T, url, token, what string) {
	t.Helper()
	eventually(t, 20*time.Second, "GET "+url+" "+what, func() error {
		body, err := httpGet(url)
		if err == nil && !strings.Contains(body, token) {
			err = fmt.Errorf("body %q lacks %q", body, token)
		}
		return err
	})
}

// httpGet fetches url from the host (the test process) with a short timeout.
func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// oneLineError checks the shape every usernet error has: nothing on stdout
// and exactly one non-empty line on stderr.
func oneLineError(r result) error {
	msg := strings.TrimRight(r.stderr, "\n")
	switch {
	case msg == "":
		return fmt.Errorf("no error message on stderr")
	case strings.Contains(msg, "\n"):
		return fmt.Errorf("error message has %d lines, want 1", strings.Count(msg, "\n")+1)
	case strings.TrimSpace(r.stdout) != "":
		return fmt.Errorf("stdout not empty on error")
	}
	return nil
}

// process is one running process seen in /proc.
type process struct {
	pid     int
	cmdline []string
}

func (p process) String() string { return fmt.Sprintf("%d %q", p.pid, p.cmdline) }

// processesOf lists the live (not zombie) processes whose real uid is uid.
func processesOf(uid uint32) []process {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var ps []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		var ruid uint32 = ^uint32(0)
		zombie := false
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) >= 2 {
				switch f[0] {
				case "Uid:":
					if v, err := strconv.ParseUint(f[1], 10, 32); err == nil {
						ruid = uint32(v)
					}
				case "State:":
					zombie = f[1] == "Z" || f[1] == "X"
				}
			}
		}
		if ruid != uid || zombie {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		ps = append(ps, process{pid: pid, cmdline: strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")})
	}
	return ps
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "State:" {
			return f[1] != "Z" && f[1] != "X"
		}
	}
	return false
}

// findProcess returns the test user's process whose command line is argv.
func (h *harness) findProcess(argv ...string) (process, bool) {
	for _, p := range processesOf(h.user.uid) {
		if strings.Join(p.cmdline, "\x00") == strings.Join(argv, "\x00") {
			return p, true
		}
	}
	return process{}, false
}

// daemonPIDs returns the test user's `usernet daemon` processes.
func (h *harness) daemonPIDs() []int {
	var pids []int
	for _, a := range []*account{&h.user, h.nobody} {
		if a == nil {
			continue
		}
		for _, p := range processesOf(a.uid) {
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
			if strings.TrimSuffix(exe, " (deleted)") == h.bin && len(p.cmdline) > 1 && p.cmdline[1] == "daemon" {
				pids = append(pids, p.pid)
			}
		}
	}
	return pids
}

// nonDaemonProcesses returns the test user's processes other than its daemons.
func (h *harness) nonDaemonProcesses() []process {
	daemons := h.daemonPIDs()
	var out []process
	for _, p := range processesOf(h.user.uid) {
		if !slices.Contains(daemons, p.pid) {
			out = append(out, p)
		}
	}
	return out
}

// stopDaemon ends every usernet daemon of the test users with their process
// groups: SIGTERM, then SIGKILL if they are still alive after 10s.
func (h *harness) stopDaemon() error {
	pids := h.daemonPIDs()
	if len(pids) == 0 {
		return nil
	}
	signal := func(sig syscall.Signal) {
		for _, pid := range pids {
			pgid, err := syscall.Getpgid(pid)
			if err == nil && pgid > 1 && pgid != syscall.Getpgrp() {
				_ = syscall.Kill(-pgid, sig)
			} else {
				_ = syscall.Kill(pid, sig)
			}
		}
	}
	anyAlive := func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return true
			}
		}
		return false
	}
	signal(syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if !anyAlive() {
			return nil
		}
	}
	signal(syscall.SIGKILL)
	return fmt.Errorf("usernet daemon %v ignored SIGTERM for 10s (killed)", pids)
}

// testBlob is 16 MiB of reproducible pseudo-random bytes for bulk transfer
// checks: big enough to need many TSO super-frames and window updates.
var testBlob = sync.OnceValue(func() []byte {
	b := make([]byte, 16<<20)
	_, _ = rand.NewChaCha8([32]byte{1, 2, 3}).Read(b)
	return b
})

// testBlobSum is the hex SHA-256 of testBlob.
func testBlobSum() string { return fmt.Sprintf("%x", sha256.Sum256(testBlob())) }

// internet is the test's stand-in for the real network: servers in the
// namespace inetNS that report the peer address they see.
type internet struct {
	http *http.Server
	dns  *dns.Server
}

func startInternet() (*internet, error) {
	// Clear what an interrupted run may have left.
	_ = exec.Command("ip", "netns", "del", inetNS).Run()
	_ = exec.Command("ip", "link", "del", vethHost).Run()
	for _, args := range [][]string{
		{"netns", "add", inetNS},
		{"link", "add", vethHost, "type", "veth", "peer", "name", vethPeer},
		{"link", "set", vethPeer, "netns", inetNS},
		{"addr", "add", inetHostIP + "/24", "dev", vethHost},
		{"link", "set", vethHost, "up"},
		{"-n", inetNS, "addr", "add", inetPeerIP + "/24", "dev", vethPeer},
		{"-n", inetNS, "link", "set", vethPeer, "up"},
		{"-n", inetNS, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	var tcp net.Listener
	var udp net.PacketConn
	err := inNetns(inetNS, func() error {
		var err error
		if tcp, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", inetPeerIP, inetHTTP)); err != nil {
			return err
		}
		udp, err = net.ListenPacket("udp4", inetPeerIP+":53")
		return err
	})
	if err != nil {
		if tcp != nil {
			tcp.Close()
		}
		return nil, fmt.Errorf("servers in %s: %w", inetNS, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, r.RemoteAddr)
	})
	mux.HandleFunc("GET /blob", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(testBlob())))
		_, _ = w.Write(testBlob())
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		n, err := io.Copy(sum, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x\n", n, sum.Sum(nil))
	})
	in := &internet{
		http: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		dns:  &dns.Server{PacketConn: udp, Handler: dns.HandlerFunc(serveDNS)},
	}
	go in.http.Serve(tcp)
	go in.dns.ActivateAndServe()
	// The host must reach the namespace directly: that is the path NAT uses.
	c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", inetPeerIP, inetHTTP), 5*time.Second)
	if err != nil {
		in.close()
		return nil, fmt.Errorf("host cannot reach %s: %w", inetNS, err)
	}
	c.Close()
	return in, nil
}

func (in *internet) close() {
	_ = in.http.Close()
	_ = in.dns.Shutdown()
}

func serveDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	if len(q.Question) == 1 {
		qq := q.Question[0]
		hdr := dns.RR_Header{Name: qq.Name, Class: dns.ClassINET, Ttl: 5, Rrtype: qq.Qtype}
		switch name := strings.ToLower(qq.Name); {
		case name == probeName && qq.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP(probeAddr)})
		case name == whoamiName && qq.Qtype == dns.TypeTXT:
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{w.RemoteAddr().String()}})
		case name == probeName || name == whoamiName:
			// The name exists, without records of this type.
		default:
			m.Rcode = dns.RcodeNameError
		}
	}
	_ = w.WriteMsg(m)
}

func findInPath(name string) string {
	for _, dir := range filepath.SplitList(userPath) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// hostNetns returns the network namespace link of the test process (the host's).
func hostNetns(t *testing.T) string {
	t.Helper()
	l, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// httpGetLarge fetches url from the host with a timeout fit for megabytes.
func httpGetLarge(url string) ([]byte, error) {
	c := &http.Client{Timeout: 60 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// inNetns runs f in the network namespace `ip netns add name` made.
func inNetns(name string, f func() error) error {
	return sandboxtest.InNetns("/run/netns/"+name, f)
}
