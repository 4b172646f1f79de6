package sandbox

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/sandbox/sandboxtest"
)

// The tests in this file play the user: a pty pair of their own stands
// for the user's terminal, in raw mode as the CLI puts it. The sandbox
// gets its replica end as Stdin, Stdout and Stderr, and the test types on
// and reads from its main end.

// ttyScript reports the command's terminal, takes a line of input, then
// reports the window size again when the terminal is resized and exits 3.
// /dev/tty opens only for a process with a controlling terminal; ls's fd 3
// is its own directory fd, anything more would be leaked from the agent.
const ttyScript = `
echo tty=$(tty)
echo fds=$(ls /proc/self/fd)
echo size=$(stty size)
if echo >/dev/tty; then echo ctty=yes; else echo ctty=no; fi
echo ready
read line
echo got=$line
trap 'echo resized=$(stty size); exit 3' WINCH
echo waiting
while :; do sleep 0.05; done
`

// ttyExchange drives ttyScript running on term: it checks what the
// command reports, types a line, resizes the terminal and sends SIGWINCH
// with signal.
func ttyExchange(t *testing.T, term *userTerm, signal func(unix.Signal) error) {
	t.Helper()
	got := map[string]string{
		"tty":  term.waitFor(t, `tty=(.*)\r\n`)[1],
		"fds":  term.waitFor(t, `fds=(.*)\r\n`)[1],
		"size": term.waitFor(t, `size=(.*)\r\n`)[1],
		"ctty": term.waitFor(t, `ctty=(.*)\r\n`)[1],
	}
	want := map[string]string{"tty": got["tty"], "fds": "0 1 2 3", "size": "37 91", "ctty": "yes"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("terminal inside (-want +got):\n%s", diff)
	}
	if !regexp.MustCompile(`^/dev/pts/[0-9]+$`).MatchString(got["tty"]) {
		t.Errorf("tty inside = %q, want /dev/pts/N", got["tty"])
	}
	term.waitFor(t, `ready\r\n`)
	term.write(t, "hello pty\r") // Enter sends CR; the pty's ICRNL makes it NL
	if line := term.waitFor(t, `got=(.*)\r\n`)[1]; line != "hello pty" {
		t.Errorf("line read inside = %q, want %q", line, "hello pty")
	}
	term.waitFor(t, `waiting\r\n`)
	term.setSize(t, 24, 132)
	if err := signal(unix.SIGWINCH); err != nil {
		t.Fatalf("signal SIGWINCH: %v", err)
	}
	if size := term.waitFor(t, `resized=(.*)\r\n`)[1]; size != "24 132" {
		t.Errorf("size after SIGWINCH = %q, want %q", size, "24 132")
	}
}

func TestTTY(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	term := newUserTerm(t, 37, 91)
	s := start(t, Spec{
		Args:  []string{"/bin/sh", "-c", ttyScript},
		TTY:   true,
		Stdin: term.pts, Stdout: term.pts, Stderr: term.pts,
		Net: NetNone,
	})
	ttyExchange(t, term, s.Signal)
	if code, err := s.Wait(); code != 3 || err != nil {
		t.Errorf("Wait() = %d, %v; want 3, nil", code, err)
	}
}

func TestTTYDrainsOutput(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	// The output goes to a one-page pipe that the test leaves unread
	// until the command has exited and been reaped, so that the relay is
	// stuck with output in hand and more in the pty when it is told to
	// stop. All of it must still come out.
	const lines = 300 // 12 KB: more than the pipe takes, less than the pipe and the pty
	term := newUserTerm(t, 24, 80)
	r, w := pipe(t)
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Fatalf("F_SETPIPE_SZ: %v", err)
	}
	s := start(t, Spec{
		Args:  []string{"/bin/sh", "-c", fmt.Sprintf("i=0; while [ $i -lt %d ]; do echo line$i-abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done; exit 4", lines)},
		TTY:   true,
		Stdin: term.pts, Stdout: w,
		Net: NetNone,
	})
	w.Close()
	for i := 0; len(children(t, s.Pid())) > 0; i++ {
		if i == 6000 {
			t.Fatal("the command did not exit with its output unread")
		}
		time.Sleep(10 * time.Millisecond)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read output: %v", err)
	}
	if code, err := s.Wait(); code != 4 || err != nil {
		t.Errorf("Wait() = %d, %v; want 4, nil", code, err)
	}
	got := strings.Count(string(out), "\r\n")
	if got != lines || !strings.HasSuffix(string(out), fmt.Sprintf("line%d-abcdefghijklmnopqrstuvwxyz\r\n", lines-1)) {
		t.Errorf("got %d lines, want %d; output ends %q", got, lines, out[max(0, len(out)-100):])
	}
}

func TestTTYWithoutTerminal(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	// Without TTY a terminal passed as stdio is just a file: the command
	// has no controlling terminal.
	term := newUserTerm(t, 24, 80)
	s := start(t, Spec{
		Args:  []string{"/bin/sh", "-c", "if (echo >/dev/tty) 2>/dev/null; then echo ctty=yes; else echo ctty=no; fi"},
		Stdin: term.pts, Stdout: term.pts, Stderr: term.pts,
		Net: NetNone,
	})
	if got := term.waitFor(t, `ctty=(.*)\n`)[1]; got != "no" {
		t.Errorf("ctty = %q, want no", got)
	}
	if code, err := s.Wait(); code != 0 || err != nil {
		t.Errorf("Wait() = %d, %v", code, err)
	}
}

func TestExecTTY(t *testing.T) {
	if sandboxtest.Unprivileged(t) {
		return
	}
	tests := []struct {
		name string
		// setup runs as the main command before it signals readiness.
		setup string
	}{
		{"host devpts", "true"},
		// /dev/ptmx unusable: the agent mounts a devpts of its own.
		{"own devpts", "mount --bind /dev/null /dev/ptmx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w := pipe(t)
			s := start(t, Spec{
				Args:   []string{"/bin/sh", "-c", tt.setup + " && echo ready && exec sleep 1000"},
				Stdout: w, Stderr: w,
				Net: NetNone,
			})
			w.Close()
			var buf [6]byte
			if n, err := r.Read(buf[:]); string(buf[:n]) != "ready\n" {
				t.Fatalf("main command: %q, %v", buf[:n], err)
			}
			term := newUserTerm(t, 37, 91)
			// Twice: the first exec's relay must stop reading the user's
			// terminal when it ends, or it would eat the second's input.
			for i := range 2 {
				p, err := s.Exec(ExecSpec{
					Args:  []string{"/bin/sh", "-c", ttyScript},
					TTY:   true,
					Stdin: term.pts, Stdout: term.pts, Stderr: term.pts,
				})
				if err != nil {
					t.Fatalf("Exec %d: %v", i, err)
				}
				ttyExchange(t, term, p.Signal)
				if code, err := p.Wait(); code != 3 || err != nil {
					t.Errorf("exec %d: Wait() = %d, %v; want 3, nil", i, code, err)
				}
				term.setSize(t, 37, 91)
			}
		})
	}
}

// userTerm is the user's terminal in a test: a pty pair whose output the
// test collects.
type userTerm struct {
	ptm, pts *os.File

	mu   sync.Mutex
	out  []byte
	seen int           // output before this offset has been matched
	more chan struct{} // closed (and replaced) when output arrives or ends
	end  error         // why reading stopped
}

// newUserTerm opens a pty pair, puts its replica in raw mode as the CLI
// does, sets its window size and starts collecting its output. Both ends
// are closed at the end of the test.
func newUserTerm(t *testing.T, rows, cols uint16) *userTerm {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	var n int
	withFD(t, ptm, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			return err
		}
		n, err = unix.IoctlGetInt(fd, unix.TIOCGPTN)
		return err
	})
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	tio, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(int(pts.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	// Like a real user's terminal it controls a session (here a sleep's),
	// so no other session may take it as its controlling terminal.
	leader := exec.Command("sleep", "1000")
	leader.Stdin = pts
	leader.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := leader.Start(); err != nil {
		t.Fatalf("start a session on the terminal: %v", err)
	}
	t.Cleanup(func() { leader.Process.Kill(); leader.Wait() })
	u := &userTerm{ptm: ptm, pts: pts, more: make(chan struct{})}
	u.setSize(t, rows, cols)
	go u.collect()
	return u
}

// collect reads the terminal's output until it fails (the test closed
// ptm).
func (u *userTerm) collect() {
	buf := make([]byte, 4096)
	for {
		n, err := u.ptm.Read(buf)
		u.mu.Lock()
		u.out = append(u.out, buf[:n]...)
		if err != nil {
			u.end = err
		}
		close(u.more)
		u.more = make(chan struct{})
		u.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// waitFor waits (up to a minute, a bound rather than a timing) for output
// matching the regular expression re after what earlier calls matched, and
// returns the submatches.
func (u *userTerm) waitFor(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.NewTimer(time.Minute)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		m := rx.FindSubmatchIndex(u.out[u.seen:])
		var sub []string
		if m != nil {
			for i := 0; i < len(m); i += 2 {
				sub = append(sub, string(u.out[u.seen+m[i]:u.seen+m[i+1]]))
			}
			u.seen += m[1]
		}
		rest, more, end := bytes.Clone(u.out[u.seen:]), u.more, u.end
		u.mu.Unlock()
		if sub != nil {
			return sub
		}
		if end != nil {
			t.Fatalf("terminal output ended (%v) without %q; unmatched output %q", end, re, rest)
		}
		select {
		case <-more:
		case <-deadline.C:
			t.Fatalf("no %q on the terminal; unmatched output %q", re, rest)
		}
	}
}

// write types s on the terminal.
func (u *userTerm) write(t *testing.T, s string) {
	t.Helper()
	if _, err := u.ptm.Write([]byte(s)); err != nil {
		t.Fatalf("type %q: %v", s, err)
	}
}

// setSize resizes the terminal, as a terminal emulator does.
func (u *userTerm) setSize(t *testing.T, rows, cols uint16) {
	t.Helper()
	withFD(t, u.ptm, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}

// withFD calls f with f's descriptor, failing the test on error. Unlike
// Fd it leaves the file in non-blocking mode, so that closing it still
// ends a Read in progress.
func withFD(t *testing.T, file *os.File, f func(fd int) error) {
	t.Helper()
	rc, err := file.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if ferr != nil {
		t.Fatalf("%s: %v", file.Name(), ferr)
	}
}
