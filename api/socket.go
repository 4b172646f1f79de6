package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SocketEnv names the environment variable that overrides the socket path
// for both the daemon and the CLI.
const SocketEnv = "USERNET_SOCKET"

// DefaultSocketPath returns where the daemon listens: $USERNET_SOCKET if
// set, else $XDG_RUNTIME_DIR/usernet/usernet.sock, else
// /tmp/usernet-UID/usernet.sock (a private directory Listen creates).
func DefaultSocketPath() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "usernet", "usernet.sock")
	}
	return filepath.Join(os.TempDir(), "usernet-"+strconv.Itoa(os.Getuid()), "usernet.sock")
}

// DefaultStateDir returns where the daemon keeps its state:
// $XDG_DATA_HOME/usernet, else ~/.local/share/usernet.
func DefaultStateDir() (string, error) {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "usernet"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("state directory: %w (set XDG_DATA_HOME)", err)
	}
	return filepath.Join(home, ".local", "share", "usernet"), nil
}

// AlreadyRunningError is Listen's error when another daemon serves the
// socket.
type AlreadyRunningError struct {
	Socket string
}

// Error says which socket is taken.
func (e *AlreadyRunningError) Error() string {
	return "a usernet daemon is already running on " + e.Socket
}

// Listener is the daemon's socket: a net.Listener that accepts only the
// owner's connections and reads descriptor-passing preambles (see
// WrapListener). It holds a lock file next to the socket for its lifetime,
// so two daemons never serve the same path. Close releases everything and
// removes the socket file.
type Listener struct {
	net.Listener
	path string
	lock *os.File

	closeOnce sync.Once
	closeErr  error
}

// Listen creates the daemon's socket at path. The socket's directory is
// created with mode 0700 if missing; the socket itself is made 0600. A
// socket file that nobody answers on (left by a daemon that died) is
// replaced; a live daemon is an *AlreadyRunningError.
func Listen(path string, logger *slog.Logger) (*Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := checkDir(dir); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &AlreadyRunningError{Socket: path}
		}
		return nil, fmt.Errorf("listen: lock %s: %w", lock.Name(), err)
	}
	l, err := listenUnix(path)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	return &Listener{Listener: WrapListener(l, os.Getuid(), logger), path: path, lock: lock}, nil
}

// listenUnix binds path, replacing a stale socket file. The caller holds
// the lock, so no other daemon of ours is binding at the same time; the
// check still dials, because a daemon of an older build (or another
// program) might hold the path without our lock.
func listenUnix(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it or choose another --socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, &AlreadyRunningError{Socket: path}
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// Bind with a umask-independent mode: bind creates the file with
	// 0777 &^ umask, so tighten it right away. The directory is private
	// already, which covers the moment in between.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// Close must not unlink: Listener.Close removes the file itself, and
	// only while it still holds the lock.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		os.Remove(path)
		return nil, err
	}
	return l, nil
}

// checkDir refuses a socket directory that belongs to someone else, and
// makes our own directory private when it is one of the default ones
// (named "usernet" or "usernet-UID"): in a shared /tmp another user could
// otherwise have created it first.
func checkDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	base := filepath.Base(dir)
	private := base == "usernet" || base == "usernet-"+strconv.Itoa(os.Getuid())
	if !private {
		return nil
	}
	if !fi.IsDir() || int(st.Uid) != os.Getuid() {
		return fmt.Errorf("socket directory %s is not a directory owned by uid %d: remove it", dir, os.Getuid())
	}
	if fi.Mode().Perm() != 0o700 {
		return os.Chmod(dir, 0o700)
	}
	return nil
}

// Path returns the socket's path.
func (l *Listener) Path() string { return l.path }

// Close stops listening, removes the socket file and releases the lock.
// It is idempotent (http.Server.Shutdown closes its listeners too), and
// only the first call touches the file, so a later daemon's socket is never
// removed by mistake.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.Listener.Close()
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) && l.closeErr == nil {
			l.closeErr = err
		}
		l.lock.Close()
	})
	return l.closeErr
}
