package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeDaemonEnv makes the test binary act as a daemon serving a
// fakeEngine on the socket the variable names (see TestMain).
const fakeDaemonEnv = "USERNET_API_TEST_DAEMON"

func TestMain(m *testing.M) {
	if sock := os.Getenv(fakeDaemonEnv); sock != "" {
		os.Exit(fakeDaemon(sock))
	}
	os.Exit(m.Run())
}

// fakeDaemon serves a fakeEngine on sock until SIGTERM, writing its pid to
// sock+".pid" so that the test can stop it.
func fakeDaemon(sock string) int {
	l, err := Listen(sock, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.WriteFile(sock+".pid", []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := NewServer(&fakeEngine{}, nil)
	go srv.Serve(l)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	<-sigs
	srv.Shutdown(context.Background())
	return 0
}

func TestConnectStartsDaemon(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "usernet.sock")
	t.Setenv(fakeDaemonEnv, sock) // inherited by the daemon Connect starts
	c, err := Connect(context.Background(), sock, &AutoStart{
		Command: []string{os.Args[0]},
		LogPath: filepath.Join(dir, "state", "daemon.log"),
	})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()
	t.Cleanup(func() { stopFakeDaemon(t, sock) })
	rows, err := c.List(context.Background(), false)
	if err != nil || len(rows) != 1 {
		t.Errorf("List through the started daemon = %v, %v; want one row", rows, err)
	}
	// A second Connect finds the daemon running and starts nothing.
	if _, err := Connect(context.Background(), sock, &AutoStart{Command: []string{"false"}, LogPath: filepath.Join(dir, "x.log")}); err != nil {
		t.Errorf("second Connect: %v", err)
	}
}

// TestConnectThroughClosingListener: the first ping reaches a listener
// that closes before answering (a daemon's last threads exiting after
// SIGKILL), which resets the connection. Connect waits until the socket is
// dead and starts a daemon instead of reporting the reset.
func TestConnectThroughClosingListener(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "usernet.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false) // a killed daemon leaves its socket file
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		defer l.Close()
		conn, err := l.Accept()
		if err != nil {
			return
		}
		// Close with the rest of the request unread: the client's read
		// fails with ECONNRESET.
		conn.Read(make([]byte, 1))
		conn.Close()
	}()
	t.Setenv(fakeDaemonEnv, sock)
	c, err := Connect(context.Background(), sock, &AutoStart{
		Command: []string{os.Args[0]},
		LogPath: filepath.Join(dir, "daemon.log"),
	})
	<-closed
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()
	t.Cleanup(func() { stopFakeDaemon(t, sock) })
	if err := c.Ping(context.Background()); err != nil {
		t.Errorf("Ping through the started daemon: %v", err)
	}
}

// stopFakeDaemon sends SIGTERM to the daemon a test started and waits
// (boundedly) for its socket to go away.
func stopFakeDaemon(t *testing.T, sock string) {
	b, err := os.ReadFile(sock + ".pid")
	if err != nil {
		t.Errorf("fake daemon pid: %v", err)
		return
	}
	pid, _ := strconv.Atoi(string(b))
	syscall.Kill(pid, syscall.SIGTERM)
	for range 500 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("fake daemon %d did not exit", pid)
}

func TestConnectReportsDaemonFailure(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "daemon.log")
	// An earlier run's lines must not show up in this run's error.
	if err := os.WriteFile(logPath, []byte("old news\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "usernet.sock")
	_, err := Connect(context.Background(), sock, &AutoStart{
		Command: []string{"sh", "-c", "echo starting; echo; echo 'usernet: cannot open state' >&2; exit 1"},
		LogPath: logPath,
	})
	want := "cannot reach the usernet daemon on " + sock + " and could not start one: starting; cannot open state"
	if err == nil || err.Error() != want {
		t.Errorf("Connect = %v, want %q", err, want)
	}
}

func TestConnectGivesUp(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "usernet.sock")
	_, err := Connect(context.Background(), sock, &AutoStart{
		Command: []string{"sleep", "1"}, // never listens
		LogPath: filepath.Join(dir, "daemon.log"),
		Timeout: 100 * time.Millisecond,
	})
	if err == nil || !strings.HasPrefix(err.Error(), "cannot reach the usernet daemon on "+sock+" and could not start one: no answer on ") {
		t.Errorf("Connect = %v, want a did-not-start error", err)
	}
}

func TestConnectWithoutAutoStart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "usernet.sock")
	_, err := Connect(context.Background(), sock, nil)
	var ue *UnreachableError
	if !errors.As(err, &ue) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Connect = %v, want an UnreachableError for a missing socket", err)
	}
	if err != nil && !strings.HasPrefix(err.Error(), "cannot reach the usernet daemon on "+sock) {
		t.Errorf("message %q does not name the socket", err)
	}
}
