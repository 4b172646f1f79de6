package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// AutoStart says how Connect starts a daemon when none answers.
type AutoStart struct {
	// Command is the daemon's command line, e.g.
	// {"/proc/self/exe", "daemon", "--socket", SOCKET}.
	Command []string
	// LogPath receives the daemon's stdout and stderr (appended); its
	// directory is created with mode 0700.
	LogPath string
	// Timeout bounds the wait for the socket to answer; 0 means 10 s.
	Timeout time.Duration
}

// pingTimeout bounds how long a daemon that accepted the connection may
// take to answer a ping before it counts as hung.
const pingTimeout = 5 * time.Second

// closingWait bounds how long Connect waits for a closing listener (see
// Connect) to finish closing; the last threads of a killed daemon release
// its socket within milliseconds.
const closingWait = 2 * time.Second

// Connect returns a client for the daemon on socket after checking that
// it answers. When nothing listens there and start is non-nil, it starts
// the daemon (detached, in its own session, so it outlives the caller) and
// waits for the socket to answer.
//
// A connection reset before any answer means the connection reached a
// listener that was closing: a daemon that is exiting (after SIGKILL its
// socket and lock stay open until its last thread is gone, after its main
// thread is already a zombie). Connect pings again until that listener is
// gone (refused, so a new daemon can take the socket and its lock) or
// answers, for at most closingWait.
func Connect(ctx context.Context, socket string, start *AutoStart) (*Client, error) {
	c := NewClient(socket)
	err := ping(ctx, c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = pingWhileReset(ctx, c)
	}
	if err == nil {
		return c, nil
	}
	if start == nil || !noListener(err) {
		return nil, err
	}
	if err := spawn(ctx, c, start); err != nil {
		return nil, err
	}
	return c, nil
}

func ping(ctx context.Context, c *Client) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	err := c.Ping(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the usernet daemon on %s is not answering", c.socket)
	}
	return err
}

// pingWhileReset pings c until the answer is something other than a
// connection reset, or closingWait has passed, and returns the last error.
func pingWhileReset(ctx context.Context, c *Client) error {
	deadline := time.NewTimer(closingWait)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return ping(ctx, c)
		case <-tick.C:
			if err := ping(ctx, c); !errors.Is(err, syscall.ECONNRESET) {
				return err
			}
		}
	}
}

// noListener reports whether err means nobody listens on the socket (as
// opposed to a daemon that answered badly or hangs).
func noListener(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// spawn starts the daemon and waits until c's socket answers.
func spawn(ctx context.Context, c *Client, start *AutoStart) error {
	if len(start.Command) == 0 {
		return errors.New("start the daemon: no command")
	}
	timeout := start.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	if err := os.MkdirAll(filepath.Dir(start.LogPath), 0o700); err != nil {
		return fmt.Errorf("start the daemon: %w", err)
	}
	logFile, err := os.OpenFile(start.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start the daemon: %w", err)
	}
	defer logFile.Close()
	// Only this attempt's lines go into an error message.
	offset, _ := logFile.Seek(0, io.SeekEnd)

	cmd := exec.Command(start.Command[0], start.Command[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = "/" // do not pin the caller's working directory
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	failed := func(why string) error {
		tail := logTail(start.LogPath, offset, 3)
		if tail == "" {
			tail = why
		}
		return fmt.Errorf("cannot reach the usernet daemon on %s and could not start one: %s", c.socket, tail)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-exited:
			// A daemon that lost the race to another one started at the
			// same moment exits, while the winner answers: that is success.
			if ping(ctx, c) == nil {
				return nil
			}
			return failed(fmt.Sprintf("it exited (%v)", err))
		case <-deadline.C:
			return failed(fmt.Sprintf("no answer on %s after %v", c.socket, timeout))
		case <-tick.C:
			if ping(ctx, c) == nil {
				return nil
			}
		}
	}
}

// logTail returns up to n last non-empty lines written to path after
// offset, joined with "; " so the error stays on one line. A line's
// "usernet: " prefix (how the daemon prints its fatal error) is dropped:
// the caller's own message will carry one.
func logTail(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	data, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if l := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "usernet: "); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
