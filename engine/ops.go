package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

func (e *Engine) wait(ctx context.Context, nameOrID string) (int, error) {
	e.mu.Lock()
	c, err := e.lookupLocked(nameOrID)
	if err != nil {
		code, ok := e.tombs.codes[nameOrID]
		e.mu.Unlock()
		if ok {
			return code, nil
		}
		return 0, err
	}
	e.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return c.rec.State.ExitCode, nil
}

func (e *Engine) stop(ctx context.Context, nameOrID string, opts StopOptions) error {
	c, err := e.lookup(nameOrID)
	if err != nil {
		return err
	}
	if !c.running() {
		return nil
	}
	timeout := DefaultStopTimeout
	if opts.Timeout != nil {
		timeout = *opts.Timeout
	}
	if timeout != 0 {
		// A failed SIGTERM means the process is already gone; done will close.
		if err := c.proc.Signal(syscall.SIGTERM); err != nil {
			e.log.Debug("stop: SIGTERM", "sandbox", c.rec.Name, "err", err)
		}
		var expired <-chan time.Time // nil, never ready: no timeout
		if timeout > 0 {
			t := time.NewTimer(timeout)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-c.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-expired:
		}
		e.log.Info("stop: still running after SIGTERM, killing it", "sandbox", c.rec.Name, "timeout", timeout)
	}
	if err := c.proc.Kill(); err != nil {
		e.log.Debug("stop: SIGKILL", "sandbox", c.rec.Name, "err", err)
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *Engine) kill(nameOrID string, sig syscall.Signal) error {
	c, err := e.lookup(nameOrID)
	if err != nil {
		return err
	}
	if !c.running() {
		return errorf(ErrConflict, "sandbox %s is not running", c.rec.Name)
	}
	if err := c.proc.Signal(sig); err != nil {
		return fmt.Errorf("kill sandbox %s: %w", c.rec.Name, err)
	}
	return nil
}

func (e *Engine) remove(ctx context.Context, nameOrID string, force bool) error {
	c, err := e.lookup(nameOrID)
	if err != nil {
		return err
	}
	if c.running() {
		if !force {
			return errorf(ErrConflict, "cannot remove running sandbox %s: stop it first (stop %s) or use rm -f", c.rec.Name, c.rec.Name)
		}
		if err := c.proc.Kill(); err != nil {
			e.log.Debug("remove: kill", "sandbox", c.rec.Name, "err", err)
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.containers[c.rec.ID] != c {
		// Removed meanwhile: by --rm as it exited, or by a concurrent Remove.
		return nil
	}
	if e.closing {
		return errClosed
	}
	if err := e.store.update(func(t txn) error { return t.deleteContainer(c.rec.ID) }); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", c.rec.Name, err)
	}
	delete(e.containers, c.rec.ID)
	delete(e.names, c.rec.Name)
	e.removeFiles(c.rec.ID)
	return nil
}

func (e *Engine) exec(_ context.Context, nameOrID string, cfg ExecConfig) (*Process, error) {
	if len(cfg.Args) == 0 || cfg.Args[0] == "" {
		return nil, errorf(ErrInvalid, "no command given: usage is exec SANDBOX CMD [ARGS...]")
	}
	c, err := e.lookup(nameOrID)
	if err != nil {
		return nil, err
	}
	if !c.running() || c.proc == nil {
		return nil, errorf(ErrConflict, "sandbox %s is not running: start a new one with run", c.rec.Name)
	}
	e.mu.Lock()
	spec := c.rec.Spec
	e.mu.Unlock()
	cfg.Env = execEnv(spec, cfg)
	p, err := c.proc.Exec(cfg)
	if err != nil {
		return nil, fmt.Errorf("exec in sandbox %s: %w", c.rec.Name, err)
	}
	return &Process{proc: p}, nil
}

// execEnv is an exec'd command's environment, as docker exec builds it:
// the sandbox's run-time environment (what its main command got: -e
// values, PATH, HOSTNAME, TERM) overridden by exec's own -e entries, plus
// TERM=xterm when exec asks for a terminal and neither set TERM. It is
// never nil, so the agent never hands the command its own environment.
func execEnv(spec runSpec, cfg ExecConfig) []string {
	env := mergeEnv(launchEnv(spec), cfg.Env)
	if cfg.TTY && !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "TERM=") }) {
		env = append(env, "TERM=xterm")
	}
	return env
}

// mergeEnv returns base with each "K=V" of over replacing base's entry for
// K in place, or appended when base has none. The inputs are not modified.
func mergeEnv(base, over []string) []string {
	env := slices.Clone(base)
	if env == nil {
		env = []string{}
	}
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		i := slices.IndexFunc(env, func(b string) bool {
			bk, _, _ := strings.Cut(b, "=")
			return bk == k
		})
		if i >= 0 {
			env[i] = kv
		} else {
			env = append(env, kv)
		}
	}
	return env
}

// followPoll is how often a following log reader looks for new output.
// Polling a regular file is what `tail -f` does without inotify; the
// interval bounds latency, not correctness.
const followPoll = 100 * time.Millisecond

func (e *Engine) logs(nameOrID string, stream LogStream, follow bool) (io.ReadCloser, error) {
	if stream != Stdout && stream != Stderr {
		return nil, errorf(ErrInvalid, "unknown log stream %q: use %s or %s", stream, Stdout, Stderr)
	}
	c, err := e.lookup(nameOrID)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	path := c.rec.LogPath
	if stream == Stderr {
		path = c.rec.StderrLogPath
	}
	e.mu.Unlock()
	if path == "" {
		// A record from a daemon that logged both streams to LogPath.
		return io.NopCloser(eofReader{}), nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		// Never written (the files of a record from an older daemon were
		// removed by hand, say): no output.
		return io.NopCloser(eofReader{}), nil
	}
	if err != nil {
		return nil, fmt.Errorf("logs of sandbox %s: %w", c.rec.Name, err)
	}
	if !follow {
		return f, nil
	}
	return &followReader{f: f, done: c.done, stop: make(chan struct{})}, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// followReader reads a log file as it grows, until the sandbox exits (then
// drains what is left and reports io.EOF) or Close is called.
type followReader struct {
	f        *os.File
	done     <-chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
}

func (r *followReader) Read(p []byte) (int, error) {
	for {
		n, err := r.f.Read(p)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		select {
		case <-r.done:
			// The writer is gone: one more read catches output written
			// between our last read and the exit.
			n, err := r.f.Read(p)
			if n > 0 {
				return n, nil
			}
			if err == nil {
				err = io.EOF
			}
			return 0, err
		case <-r.stop:
			return 0, io.EOF
		case <-time.After(followPoll):
		}
	}
}

// Close ends a Read in progress and closes the file.
func (r *followReader) Close() error {
	r.stopOnce.Do(func() { close(r.stop) })
	return r.f.Close()
}
