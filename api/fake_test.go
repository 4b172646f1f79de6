package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usernet/usernet/engine"
)

// fakeEngine is an Engine whose answers the test sets and which records
// what it was asked.
type fakeEngine struct {
	mu         sync.Mutex
	runs       []engine.RunConfig
	runErr     error
	runWrite   string        // written to cfg.Stdout by Run, if set
	exitCode   int           // Wait's answer
	exited     chan struct{} // Wait blocks until closed (nil: at once)
	stops      []engine.StopOptions
	kills      []syscall.Signal
	removed    []string
	execs      []engine.ExecConfig
	proc       *fakeProcess
	logs       string      // stdout
	errLogs    string      // stderr
	logFollow  chan string // with follow, Logs streams what arrives here until closed
	netCreates []engine.NetworkCreateConfig
	netRemoved []string
}

// notFound is what the fake says about any name but "web".
func notFound(name string) error {
	return fmt.Errorf("%w: no such sandbox: %s", engine.ErrNotFound, name)
}

func (f *fakeEngine) Run(ctx context.Context, cfg engine.RunConfig) (string, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runErr != nil {
		return "", nil, f.runErr
	}
	if f.runWrite != "" && cfg.Stdout != nil {
		io.WriteString(cfg.Stdout, f.runWrite)
	}
	cfg.Stdin, cfg.Stdout, cfg.Stderr = nil, nil, nil
	f.runs = append(f.runs, cfg)
	return strings.Repeat("ab", 32), []string{"a warning"}, nil
}

func (f *fakeEngine) Wait(ctx context.Context, name string) (int, error) {
	if name != "web" && name != strings.Repeat("ab", 32) {
		return 0, notFound(name)
	}
	if f.exited != nil {
		select {
		case <-f.exited:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return f.exitCode, nil
}

func (f *fakeEngine) Stop(ctx context.Context, name string, opts engine.StopOptions) error {
	if name != "web" {
		return notFound(name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, opts)
	return nil
}

func (f *fakeEngine) Kill(name string, sig syscall.Signal) error {
	if name != "web" {
		return notFound(name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kills = append(f.kills, sig)
	return nil
}

func (f *fakeEngine) Remove(ctx context.Context, name string, force bool) error {
	switch {
	case name == "running" && !force:
		return fmt.Errorf("%w: cannot remove running sandbox running: stop it first", engine.ErrConflict)
	case name != "web" && name != "running" && name != "/slash":
		return notFound(name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, fmt.Sprintf("%s force=%v", name, force))
	return nil
}

func (f *fakeEngine) Exec(ctx context.Context, name string, cfg engine.ExecConfig) (Process, error) {
	if name != "web" {
		return nil, notFound(name)
	}
	if cfg.Stdout != nil {
		fmt.Fprintf(cfg.Stdout, "exec %s stdin=%v\n", strings.Join(cfg.Args, " "), cfg.Stdin != nil)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cfg.Stdin, cfg.Stdout, cfg.Stderr = nil, nil, nil
	f.execs = append(f.execs, cfg)
	return f.proc, nil
}

func (f *fakeEngine) List(all bool) []engine.ContainerSummary {
	rows := []engine.ContainerSummary{{ID: strings.Repeat("1", 64), Names: []string{"web"}, State: "running"}}
	if all {
		rows = append(rows, engine.ContainerSummary{ID: strings.Repeat("2", 64), Names: []string{"old"}, State: "exited"})
	}
	return rows
}

func (f *fakeEngine) Inspect(name string) (engine.ContainerJSON, error) {
	if name != "web" {
		return engine.ContainerJSON{}, notFound(name)
	}
	return engine.ContainerJSON{ID: strings.Repeat("1", 64), Name: "/web", Args: []string{"sleep"}}, nil
}

func (f *fakeEngine) Logs(name string, stream engine.LogStream, follow bool) (io.ReadCloser, error) {
	if name != "web" {
		return nil, notFound(name)
	}
	switch {
	case stream == engine.Stderr:
		return io.NopCloser(strings.NewReader(f.errLogs)), nil
	case stream != engine.Stdout:
		return nil, fmt.Errorf("%w: stream %q", engine.ErrInvalid, stream)
	case !follow:
		return io.NopCloser(strings.NewReader(f.logs)), nil
	}
	pr, pw := io.Pipe()
	go func() {
		for s := range f.logFollow {
			if _, err := io.WriteString(pw, s); err != nil {
				return
			}
		}
		pw.Close()
	}()
	return pr, nil
}

func (f *fakeEngine) Port(name string) ([]engine.PortMapping, error) {
	if name != "web" {
		return nil, notFound(name)
	}
	return []engine.PortMapping{{ContainerPort: 80, Proto: "tcp", HostPort: 5000}}, nil
}

func (f *fakeEngine) Networks() []engine.NetworkResource {
	return []engine.NetworkResource{{Name: "bridge", ID: strings.Repeat("b", 64), Driver: "bridge", Scope: "local"}}
}

func (f *fakeEngine) NetworkInspect(name string) (engine.NetworkResource, error) {
	if name != "bridge" {
		return engine.NetworkResource{}, fmt.Errorf("%w: no such network: %s", engine.ErrNotFound, name)
	}
	return f.Networks()[0], nil
}

// NetworkCreate accepts any name but "dup", which exists already.
func (f *fakeEngine) NetworkCreate(ctx context.Context, cfg engine.NetworkCreateConfig) (string, error) {
	if cfg.Name == "dup" {
		return "", fmt.Errorf("%w: network with name dup already exists", engine.ErrConflict)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.netCreates = append(f.netCreates, cfg)
	return strings.Repeat("cd", 32), nil
}

// NetworkRemove knows "mynet" (removable) and "bridge" (predefined).
func (f *fakeEngine) NetworkRemove(name string) error {
	switch name {
	case "bridge":
		return fmt.Errorf("%w: bridge is a pre-defined network and cannot be removed", engine.ErrInvalid)
	case "mynet":
		f.mu.Lock()
		defer f.mu.Unlock()
		f.netRemoved = append(f.netRemoved, name)
		return nil
	}
	return fmt.Errorf("%w: no such network: %s", engine.ErrNotFound, name)
}

func (f *fakeEngine) NetworkPrune() ([]string, error) { return []string{"a", "b"}, nil }

// fakeProcess is an exec'd command that exits when told to.
type fakeProcess struct {
	code    int
	exit    chan struct{}
	mu      sync.Mutex
	signals []syscall.Signal
}

func (p *fakeProcess) Wait() (int, error) {
	<-p.exit
	return p.code, nil
}

func (p *fakeProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signals = append(p.signals, sig)
	if sig == syscall.SIGKILL {
		return errors.New("process already finished")
	}
	return nil
}

// serve runs a Server for eng on a socket in a temporary directory and
// returns a client for it; both end with the test.
func serve(t *testing.T, eng Engine) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "usernet.sock")
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	srv := NewServer(eng, nil)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	c := NewClient(path)
	t.Cleanup(func() {
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		l.Close()
	})
	return c
}
