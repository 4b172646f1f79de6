package engine

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/nat"
)

// Fakes for the engine's deps (deps.go): they record what the engine asked
// for, fail on request, and hold real resources where "nothing left
// behind" must be observable (listening sockets for published ports, open
// files for TAPs).

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeLauncher starts fakeProcs.
type fakeLauncher struct {
	mu     sync.Mutex
	specs  []launchSpec
	procs  []*fakeProc
	fail   error  // returned by Launch when set
	output string // written to the command's stdout at start
	errOut string // written to the command's stderr at start
	noTAP  bool   // bridge sandboxes come without a TAP
	nextID int
}

func (l *fakeLauncher) Launch(ctx context.Context, ls launchSpec) (sandboxProcess, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.specs = append(l.specs, ls)
	if l.fail != nil {
		return nil, l.fail
	}
	if l.output != "" {
		if _, err := ls.Stdout.WriteString(l.output); err != nil {
			return nil, err
		}
	}
	if l.errOut != "" {
		if _, err := ls.Stderr.WriteString(l.errOut); err != nil {
			return nil, err
		}
	}
	l.nextID++
	p := &fakeProc{pid: 1000 + l.nextID, done: make(chan struct{}), ignoreTerm: ls.Env != nil && containsEnv(ls.Env, "IGNORE_TERM=1")}
	if ls.Mode == modeBridge && !l.noTAP {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		w.Close()
		p.tap = r
	}
	l.procs = append(l.procs, p)
	return p, nil
}

func containsEnv(env []string, kv string) bool {
	for _, e := range env {
		if e == kv {
			return true
		}
	}
	return false
}

func (l *fakeLauncher) last() (launchSpec, *fakeProc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var p *fakeProc
	if len(l.procs) > 0 {
		p = l.procs[len(l.procs)-1]
	}
	return l.specs[len(l.specs)-1], p
}

func (l *fakeLauncher) setFail(err error) {
	l.mu.Lock()
	l.fail = err
	l.mu.Unlock()
}

// fakeProc is a sandbox whose command runs until told to exit.
type fakeProc struct {
	pid        int
	tap        *os.File
	ignoreTerm bool

	mu      sync.Mutex
	signals []syscall.Signal
	closed  bool
	code    int
	once    sync.Once
	done    chan struct{}
}

func (p *fakeProc) TAP() *os.File { return p.tap }
func (p *fakeProc) Pid() int      { return p.pid }

func (p *fakeProc) DirectSockets(context.Context, int) ([]*os.File, error) {
	return nil, errors.New("fake: no direct sockets")
}

func (p *fakeProc) Wait() (int, error) {
	<-p.done
	return p.code, nil
}

func (p *fakeProc) exit(code int) {
	p.once.Do(func() {
		p.code = code
		close(p.done)
	})
}

func (p *fakeProc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	p.mu.Unlock()
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	if sig == syscall.SIGTERM && p.ignoreTerm {
		return nil
	}
	if sig == syscall.SIGTERM || sig == syscall.SIGKILL {
		p.exit(128 + int(sig))
	}
	return nil
}

// sent returns the signals sent to the command so far.
func (p *fakeProc) sent() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.signals)
}

func (p *fakeProc) Kill() error {
	p.exit(137)
	return nil
}

func (p *fakeProc) Close() error {
	p.exit(137)
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return nil
}

func (p *fakeProc) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *fakeProc) Exec(cfg ExecConfig) (execProcess, error) {
	if cfg.Args[0] == "missing" {
		return nil, withKind(ErrInvalid, errors.New(`exec: "missing": executable file not found in $PATH`))
	}
	return fakeExec(len(cfg.Args)), nil
}

// fakeExec is an exec'd command that exits at once with its value as code.
type fakeExec int

func (x fakeExec) Wait() (int, error)              { return int(x), nil }
func (x fakeExec) Signal(sig syscall.Signal) error { return os.ErrProcessDone }

// fakeBridge is a bridge data path whose published ports are real
// listening sockets on loopback, so tests can check that a port is free
// again after a rollback.
type fakeBridge struct {
	mu         sync.Mutex
	spec       bridgeSpec
	attached   map[string]netip.Addr
	listeners  map[PortMapping]net.Listener
	failAttach error
	closed     bool
}

func newFakeBridge() *fakeBridge {
	return &fakeBridge{attached: make(map[string]netip.Addr), listeners: make(map[PortMapping]net.Listener)}
}

func (b *fakeBridge) Attach(name string, tap *os.File, mac [6]byte, ip netip.Addr, direct nat.SocketSource) (func(), error) {
	tap.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failAttach != nil {
		return nil, b.failAttach
	}
	if _, ok := b.attached[name]; ok {
		return nil, errors.New("fake: port name attached twice")
	}
	if mac != macFor(ip) {
		return nil, errors.New("fake: MAC does not match address")
	}
	if direct == nil {
		return nil, errors.New("fake: sandbox attached without its direct sockets")
	}
	b.attached[name] = ip
	return func() {
		b.mu.Lock()
		delete(b.attached, name)
		b.mu.Unlock()
	}, nil
}

// Publish listens on loopback (tests never publish on other addresses;
// an unspecified host address is bound on 127.0.0.1 but reported as asked).
func (b *fakeBridge) Publish(m PortMapping, target netip.AddrPort) (PortMapping, error) {
	if m.Proto != "tcp" {
		return PortMapping{}, errors.New("fake: tcp only")
	}
	ip := m.HostIP
	if ip.IsUnspecified() {
		ip = netip.MustParseAddr("127.0.0.1")
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, m.HostPort).String())
	if errors.Is(err, syscall.EADDRINUSE) {
		return PortMapping{}, withKind(ErrConflict, err)
	}
	if err != nil {
		return PortMapping{}, err
	}
	m.HostPort = uint16(ln.Addr().(*net.TCPAddr).Port)
	b.mu.Lock()
	b.listeners[m] = ln
	b.mu.Unlock()
	return m, nil
}

func (b *fakeBridge) Unpublish(m PortMapping, target netip.AddrPort) error {
	b.mu.Lock()
	ln, ok := b.listeners[m]
	delete(b.listeners, m)
	b.mu.Unlock()
	if !ok {
		return errors.New("fake: not published")
	}
	return ln.Close()
}

func (b *fakeBridge) EchoMode() string { return "gateway-only" }
func (b *fakeBridge) TCPMode() string  { return "netstack" }

func (b *fakeBridge) Bypass(dst netip.AddrPort) (netip.AddrPort, bool) {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dst.Port()), true
}

func (b *fakeBridge) Close() {
	b.mu.Lock()
	b.closed = true
	for m, ln := range b.listeners {
		ln.Close()
		delete(b.listeners, m)
	}
	b.mu.Unlock()
}

func (b *fakeBridge) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// bridgeOf returns the data path last made for the network name.
func (env *testEnv) bridgeOf(name string) *fakeBridge {
	env.mu.Lock()
	defer env.mu.Unlock()
	return env.bridges[name]
}

func (b *fakeBridge) counts() (attached, published int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.attached), len(b.listeners)
}

// testEnv is an engine on fakes with a state dir of its own.
type testEnv struct {
	t        *testing.T
	e        *Engine
	dir      string
	clock    *fakeClock
	launcher *fakeLauncher
	bridge   *fakeBridge // the default bridge network's

	// bridges are the data paths of the current engine by network name,
	// including ones closed since; failBridge, when set, fails newBridge.
	mu         sync.Mutex
	bridges    map[string]*fakeBridge
	failBridge error
}

var testStart = time.Date(2026, 11, 22, 16, 0, 0, 0, time.UTC)

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	env := &testEnv{
		t:        t,
		dir:      t.TempDir(),
		clock:    &fakeClock{t: testStart},
		launcher: &fakeLauncher{},
	}
	env.open()
	return env
}

// open (re)starts the engine on env's state dir with a fresh bridge.
func (env *testEnv) open() {
	env.t.Helper()
	resolv := filepath.Join(env.dir, "host-resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.test\n"), 0o644); err != nil {
		env.t.Fatal(err)
	}
	env.bridges = make(map[string]*fakeBridge)
	e, err := newEngine(context.Background(), Config{
		StateDir:       filepath.Join(env.dir, "state"),
		Clock:          env.clock.Now,
		HostResolvConf: resolv,
	}, deps{
		launcher: env.launcher,
		newBridge: func(s bridgeSpec) (bridge, error) {
			env.mu.Lock()
			defer env.mu.Unlock()
			if env.failBridge != nil {
				return nil, env.failBridge
			}
			b := newFakeBridge()
			b.spec = s
			env.bridges[s.Name] = b
			return b, nil
		},
		readFile: os.ReadFile,
		hostname: func() (string, error) { return "testhost", nil },
	})
	if err != nil {
		env.t.Fatalf("newEngine: %v", err)
	}
	env.e = e
	env.bridge = env.bridges["bridge"]
	env.t.Cleanup(func() { e.Close() })
}

// run starts a sandbox and fails the test on error.
func (env *testEnv) run(cfg RunConfig) (string, *fakeProc, launchSpec) {
	env.t.Helper()
	if cfg.Args == nil {
		cfg.Args = []string{"sleep", "1000"}
	}
	cfg.Detach = true
	// Each sandbox is a second younger than the previous one, so that
	// List's newest-first order is defined.
	env.clock.Advance(time.Second)
	id, _, err := env.e.Run(context.Background(), cfg)
	if err != nil {
		env.t.Fatalf("Run(%+v): %v", cfg, err)
	}
	spec, p := env.launcher.last()
	return id, p, spec
}

// sandboxDirs lists the per-sandbox directories in the state dir.
func (env *testEnv) sandboxDirs() []string {
	env.t.Helper()
	ents, err := os.ReadDir(filepath.Join(env.dir, "state", "sandboxes"))
	if err != nil {
		env.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
