package e2e

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestRun covers the sandbox lifecycle as Docker users know it: foreground
// runs pass stdio and exit status through, detached ones have logs, names and
// IDs address them, stop and rm end them.
func TestRun(t *testing.T) {
	h := env(t)

	t.Run("foreground stdout stderr and status", func(t *testing.T) {
		h.fresh(t)
		r := h.usernet(t, "run", "--rm", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
		want := result{argv: r.argv, stdout: "out\n", stderr: "err\n", code: 3}
		if diff := cmp.Diff(want, r, cmp.AllowUnexported(result{})); diff != "" {
			t.Errorf("usernet run -- sh -c 'echo out; echo err >&2; exit 3' (-want +got):\n%s", diff)
		}
		if r := h.usernet(t, "run", "--", "sh", "-c", "exit 0"); r.code != 0 {
			t.Errorf("exit 0: %s", r)
		}
	})

	t.Run("stdin with -i", func(t *testing.T) {
		h.fresh(t)
		r := h.do(t, call{args: []string{"run", "--rm", "-i", "--", "cat"}, stdin: strings.NewReader("hi\n")})
		if r.code != 0 || r.stdout != "hi\n" {
			t.Errorf("echo hi | usernet run -i -- cat: want hi: %s", r)
		}
		// Megabytes through stdin and stdout arrive intact and complete.
		blob := testBlob()[:4<<20]
		r = h.do(t, call{args: []string{"run", "--rm", "-i", "--", "cat"}, stdin: bytes.NewReader(blob)})
		if r.code != 0 || r.stdout != string(blob) {
			t.Errorf("4 MiB through usernet run -i -- cat: status %d, %d bytes out (want %d, identical), stderr %q", r.code, len(r.stdout), len(blob), r.stderr)
		}
		// Without -i the command's stdin is not the caller's.
		r = h.do(t, call{args: []string{"run", "--rm", "--", "cat"}, stdin: strings.NewReader("hi\n")})
		if r.code != 0 || r.stdout != "" {
			t.Errorf("echo hi | usernet run -- cat (no -i): want no output: %s", r)
		}
	})

	t.Run("terminal with -t", func(t *testing.T) {
		h.fresh(t)
		// script(1) gives usernet a terminal of its own.
		r := h.shell(t, "script", "-qec", h.bin+" run --rm -t -- tty", "/dev/null")
		if r.code != 0 || !regexp.MustCompile(`/dev/pts/\d+`).MatchString(r.stdout) {
			t.Errorf("usernet run -t -- tty under script: want /dev/pts/N: %s", r)
		}
		r = h.shell(t, "script", "-qec", h.bin+" run --rm -t -- sh -c 'exit 5'", "/dev/null")
		if r.code != 5 {
			t.Errorf("usernet run -t -- sh -c 'exit 5' under script: want status 5: %s", r)
		}
		r = h.shell(t, "script", "-qec", h.bin+" run --rm -- tty", "/dev/null")
		if r.code == 0 || !strings.Contains(r.stdout, "not a tty") {
			t.Errorf("usernet run -- tty (no -t) under script: want \"not a tty\": %s", r)
		}
	})

	t.Run("foreground run forwards signals", func(t *testing.T) {
		h.fresh(t)
		marker := strconv.Itoa(85000 + int(time.Now().UnixNano()%400))
		cli := h.startAs(t, h.user, h.bin, "run", "--rm", "--name", "sig", "--", "sleep", marker)
		eventually(t, 10*time.Second, "the sandbox's sleep process", func() error {
			if _, found := h.findProcess("sleep", marker); !found {
				return fmt.Errorf("no process `sleep %s` of %s", marker, testUser)
			}
			return nil
		})
		if err := cli.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cli.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cli.Process.Pid, syscall.SIGKILL)
			<-done
			t.Fatalf("usernet run still running 15s after SIGTERM")
		}
		if code := cli.ProcessState.ExitCode(); code != 128+int(syscall.SIGTERM) {
			t.Errorf("usernet run exited %d after SIGTERM, want %d (the command's death by SIGTERM)", code, 128+int(syscall.SIGTERM))
		}
		eventually(t, 10*time.Second, "the sandbox gone after its command died of the forwarded SIGTERM", func() error {
			if p, found := h.findProcess("sleep", marker); found {
				return fmt.Errorf("%v still alive", p)
			}
			if ids := h.psAll(t); len(ids) != 0 {
				return fmt.Errorf("ps -a lists %v (run --rm)", ids)
			}
			return nil
		})
	})

	t.Run("environment with -e", func(t *testing.T) {
		h.fresh(t)
		out := h.ok(t, "run", "--rm", "-e", "GREETING=hello world", "-e", "EMPTY=", "--", "sh", "-c", `echo "$GREETING|${EMPTY-unset}"`)
		if out != "hello world|\n" {
			t.Errorf("usernet run -e: got %q, want %q", out, "hello world|\n")
		}
	})

	t.Run("exec", func(t *testing.T) {
		h.fresh(t)
		marker := strconv.Itoa(89000 + int(time.Now().UnixNano()%400))
		h.runDetached(t, "--name", "xx", "-e", "FROM_RUN=1", "sleep", marker)
		if out := h.ok(t, "exec", "-e", "FROM_EXEC=2", "xx", "sh", "-c", "echo $FROM_RUN$FROM_EXEC"); out != "12\n" {
			t.Errorf("usernet exec -e: got %q, want %q (run's and exec's environment)", out, "12\n")
		}
		if r := h.usernet(t, "exec", "xx", "sh", "-c", "echo e >&2; exit 4"); r.code != 4 || r.stderr != "e\n" {
			t.Errorf("usernet exec xx sh -c 'echo e >&2; exit 4': want status 4 and stderr e: %s", r)
		}
		r := h.do(t, call{args: []string{"exec", "-i", "xx", "cat"}, stdin: strings.NewReader("via exec\n")})
		if r.code != 0 || r.stdout != "via exec\n" {
			t.Errorf("usernet exec -i xx cat: %s", r)
		}
		// exec runs in the sandbox's network namespace.
		var p process
		eventually(t, 10*time.Second, "the sandbox's sleep process", func() error {
			var found bool
			if p, found = h.findProcess("sleep", marker); !found {
				return fmt.Errorf("no process `sleep %s` of %s", marker, testUser)
			}
			return nil
		})
		want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.pid))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(h.ok(t, "exec", "xx", "readlink", "/proc/self/ns/net")); got != want {
			t.Errorf("usernet exec xx runs in network namespace %s, the sandbox's command in %s", got, want)
		}
	})

	t.Run("detached and logs", func(t *testing.T) {
		h.fresh(t)
		h.runDetached(t, "--name", "lg", "sh", "-c", "echo to-stdout; echo to-stderr >&2; sleep infinity")
		eventually(t, 10*time.Second, "usernet logs lg", func() error {
			r := h.usernet(t, "logs", "lg")
			if r.code != 0 || !strings.Contains(r.stdout+r.stderr, "to-stdout\n") || !strings.Contains(r.stdout+r.stderr, "to-stderr\n") {
				return fmt.Errorf("want to-stdout and to-stderr: %s", r)
			}
			return nil
		})
		// logs -f follows until the command ends.
		h.runDetached(t, "--name", "ff", "sh", "-c", "echo one; sleep 1; echo two")
		r := h.do(t, call{args: []string{"logs", "-f", "ff"}, timeout: 20 * time.Second})
		if r.code != 0 || r.stdout != "one\ntwo\n" {
			t.Errorf("usernet logs -f ff: want one, two and exit when the command ends: %s", r)
		}
	})

	t.Run("logs keeps stdout and stderr apart", func(t *testing.T) {
		h.fresh(t)
		h.runDetached(t, "--name", "lg", "sh", "-c", "echo to-stdout; echo to-stderr >&2; sleep infinity")
		eventually(t, 10*time.Second, "usernet logs lg", func() error {
			r := h.usernet(t, "logs", "lg")
			if r.code != 0 || r.stdout != "to-stdout\n" || r.stderr != "to-stderr\n" {
				return fmt.Errorf("want stdout to-stdout and stderr to-stderr, as docker logs: %s", r)
			}
			return nil
		})
	})

	t.Run("rm flag leaves nothing", func(t *testing.T) {
		h.fresh(t)
		if out := h.ok(t, "run", "--rm", "--", "true"); out != "" {
			t.Errorf("usernet run --rm -- true printed %q", out)
		}
		if ids := h.psAll(t); len(ids) != 0 {
			t.Errorf("ps -a after run --rm: %v, want nothing", ids)
		}
		h.runDetached(t, "--rm", "sh", "-c", "exit 0")
		eventually(t, 10*time.Second, "ps -a after run -d --rm of a command that exits", func() error {
			if ids := h.psAll(t); len(ids) != 0 {
				return fmt.Errorf("ps -a lists %v", ids)
			}
			return nil
		})
	})

	t.Run("ps lists running and all", func(t *testing.T) {
		h.fresh(t)
		live := h.runDetached(t, "--name", "live", "sleep", "infinity")
		done := h.runDetached(t, "--name", "done", "sh", "-c", "exit 7")
		eventually(t, 10*time.Second, "inspect done", func() error {
			c := h.inspect(t, "done")
			if c.State.Running || c.State.ExitCode != 7 {
				return fmt.Errorf("State %+v, want not running, ExitCode 7", c.State)
			}
			return nil
		})
		if got := matchIDs(t, strings.Fields(h.ok(t, "ps", "-q")), live, done); !slices.Equal(got, []string{live}) {
			t.Errorf("ps -q lists %v, want only the running %s", got, live)
		}
		if got := matchIDs(t, h.psAll(t), live, done); !slices.Equal(sorted(got), sorted([]string{live, done})) {
			t.Errorf("ps -a -q lists %v, want both", got)
		}
		table := h.ok(t, "ps", "-a")
		if !regexp.MustCompile(`(?m)\slive\s*$`).MatchString(table) || !regexp.MustCompile(`(?m)\sdone\s*$`).MatchString(table) {
			t.Errorf("ps -a does not end rows with the names live and done (NAMES column):\n%s", table)
		}
	})

	t.Run("name must be unique", func(t *testing.T) {
		h.fresh(t)
		h.runDetached(t, "--name", "dup", "sleep", "infinity")
		before := h.psAll(t)
		r := h.usernet(t, "run", "-d", "--name", "dup", "sleep", "infinity")
		if r.code != 125 || !strings.Contains(r.stderr, "dup") {
			t.Errorf("second run --name dup: want status 125 and an error naming dup: %s", r)
		}
		if err := oneLineError(r); err != nil {
			t.Errorf("second run --name dup: %v: %s", err, r)
		}
		if after := h.psAll(t); !slices.Equal(before, after) {
			t.Errorf("ps -a changed from %v to %v by a refused run", before, after)
		}
	})

	t.Run("random names", func(t *testing.T) {
		h.fresh(t)
		a := h.inspect(t, h.runDetached(t, "sleep", "infinity"))
		b := h.inspect(t, h.runDetached(t, "sleep", "infinity"))
		valid := regexp.MustCompile(`^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)
		if !valid.MatchString(a.Name) || !valid.MatchString(b.Name) || a.Name == b.Name {
			t.Errorf("generated names %q and %q: want two different valid names", a.Name, b.Name)
		}
		if c := h.inspect(t, strings.TrimPrefix(a.Name, "/")); c.ID != a.ID {
			t.Errorf("inspect by generated name %s found %s, want %s", a.Name, c.ID, a.ID)
		}
	})

	t.Run("IDs and unique prefixes", func(t *testing.T) {
		h.fresh(t)
		id1 := h.runDetached(t, "--name", "p1", "sleep", "infinity")
		id2 := h.runDetached(t, "--name", "p2", "sleep", "infinity")
		if id1 == id2 {
			t.Fatalf("two sandboxes got the same ID %s", id1)
		}
		n := 1
		for id1[:n] == id2[:n] {
			n++
		}
		for _, ref := range []string{id1, id1[:12], id1[:n]} {
			if c := h.inspect(t, ref); c.ID != id1 {
				t.Errorf("inspect %s: found %s, want %s", ref, c.ID, id1)
			}
		}
		if n > 1 {
			r := h.usernet(t, "inspect", id1[:n-1])
			if r.code == 0 {
				t.Errorf("inspect %s (prefix of both %s and %s) succeeded, want an ambiguity error: %s", id1[:n-1], id1, id2, r)
			}
		}
		if out := h.ok(t, "exec", id2[:12], "echo", "ok"); out != "ok\n" {
			t.Errorf("exec by short ID: %q", out)
		}
		if short := strings.Fields(h.ok(t, "ps", "-q")); len(short) != 2 || !slices.Contains(short, id1[:12]) || !slices.Contains(short, id2[:12]) {
			t.Errorf("ps -q: %v, want the two 12-digit short IDs %s %s", short, id1[:12], id2[:12])
		}
	})

	t.Run("stop", func(t *testing.T) {
		h.fresh(t)
		marker := strconv.Itoa(87000 + int(time.Now().UnixNano()%400))
		h.runDetached(t, "--name", "st", "sleep", marker)
		if out := h.ok(t, "stop", "-t", "5", "st"); out != "st\n" {
			t.Errorf("usernet stop st printed %q, want \"st\\n\"", out)
		}
		c := h.inspect(t, "st")
		if c.State.Running || c.State.Status != "exited" {
			t.Errorf("inspect st after stop: State %+v, want exited", c.State)
		}
		if p, found := h.findProcess("sleep", marker); found {
			t.Errorf("process %v still alive after stop", p)
		}
		if ids := h.psAll(t); len(ids) != 1 {
			t.Errorf("ps -a after stop: %v, want the stopped sandbox", ids)
		}
		// A command that ignores SIGTERM is killed after the timeout.
		h.runDetached(t, "--name", "stubborn", "sh", "-c", "trap '' TERM; while :; do sleep 1; done")
		if r := h.do(t, call{args: []string{"stop", "-t", "1", "stubborn"}, timeout: 20 * time.Second}); r.code != 0 {
			t.Errorf("stop -t 1 of a command ignoring SIGTERM: %s", r)
		}
		if c := h.inspect(t, "stubborn"); c.State.Running {
			t.Errorf("stubborn still running after stop -t 1")
		}
	})

	t.Run("rm -f of a running sandbox", func(t *testing.T) {
		h.fresh(t)
		marker := strconv.Itoa(88000 + int(time.Now().UnixNano()%400))
		port := freePort(t)
		h.runDetached(t, "--name", "rr", "-p", fmt.Sprintf("%d:80", port), "sleep", marker)
		r := h.usernet(t, "rm", "rr")
		if r.code == 0 {
			t.Errorf("rm of a running sandbox without -f succeeded: %s", r)
		} else if err := oneLineError(r); err != nil {
			t.Errorf("rm without -f: %v: %s", err, r)
		}
		if out := h.ok(t, "rm", "-f", "rr"); out != "rr\n" {
			t.Errorf("usernet rm -f rr printed %q, want \"rr\\n\"", out)
		}
		if ids := h.psAll(t); len(ids) != 0 {
			t.Errorf("ps -a after rm -f: %v", ids)
		}
		eventually(t, 10*time.Second, "the sandbox's process gone after rm -f", func() error {
			if p, found := h.findProcess("sleep", marker); found {
				return fmt.Errorf("%v still alive", p)
			}
			return nil
		})
		if err := portIsFree(port); err != nil {
			t.Errorf("published port %d still held after rm -f: %v", port, err)
		}
	})
}

// matchIDs maps the IDs or ID prefixes ps printed to the full IDs given.
func matchIDs(t *testing.T, listed []string, full ...string) []string {
	t.Helper()
	var got []string
	for _, l := range listed {
		matched := false
		for _, id := range full {
			if strings.HasPrefix(id, l) {
				got = append(got, id)
				matched = true
			}
		}
		if !matched {
			got = append(got, l)
		}
	}
	return got
}

// killPID sends SIGKILL to one process the test's sandbox started.
func killPID(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	return nil
}
