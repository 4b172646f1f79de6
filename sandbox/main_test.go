package sandbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usernet/usernet/sandbox/sandboxtest"
)

// The sandbox tests run the product path: an unprivileged user starting
// sandboxes (sandboxtest.Unprivileged).

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == AgentArg {
		AgentMain()
	}
	code := sandboxtest.Main(m)
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
