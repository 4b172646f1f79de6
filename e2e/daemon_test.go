package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemon covers the daemon itself: started on demand by any command,
// reachable by its owner only, and `usernet daemon` run by hand.
func TestDaemon(t *testing.T) {
	h := env(t)
	sock := filepath.Join(h.user.runDir, "usernet", "usernet.sock")

	t.Run("starts on demand", func(t *testing.T) {
		if err := h.stopDaemon(); err != nil {
			t.Fatal(err)
		}
		if pids := h.daemonPIDs(); len(pids) != 0 {
			t.Fatalf("daemons %v still running after stopping them", pids)
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			t.Fatalf("%s answers with no daemon running", sock)
		}
		if ids := h.psAll(t); len(ids) != 0 {
			t.Errorf("ps -a -q on a new daemon: %v, want nothing", ids)
		}
		if pids := h.daemonPIDs(); len(pids) != 1 {
			t.Fatalf("usernet ps started %d daemons (%v), want 1", len(pids), pids)
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("the daemon started on demand does not listen on %s: %v", sock, err)
		}
		c.Close()
		// The daemon started on demand serves sandboxes too.
		if out := h.ok(t, "run", "--rm", "--", "echo", "up"); out != "up\n" {
			t.Errorf("run on the daemon started on demand printed %q", out)
		}
		// `run` starts the daemon itself as well.
		if err := h.stopDaemon(); err != nil {
			t.Fatal(err)
		}
		if out := h.ok(t, "run", "--rm", "--", "echo", "up"); out != "up\n" {
			t.Errorf("run starting the daemon on demand printed %q", out)
		}
	})

	t.Run("restarts after a crash", func(t *testing.T) {
		h.fresh(t)
		port := freePort(t)
		marker := strconv.Itoa(84000 + int(time.Now().UnixNano()%400))
		h.runDetached(t, "--name", "crashy", "-p", fmt.Sprintf("%d:80", port), "sleep", marker)
		pids := h.daemonPIDs()
		if len(pids) != 1 {
			t.Fatalf("want one daemon running, have %v", pids)
		}
		// SIGKILL leaves the socket file behind, as a crash would.
		if err := killPID(pids[0]); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the killed daemon gone", func() error {
			if alive(pids[0]) {
				return fmt.Errorf("daemon %d still alive", pids[0])
			}
			return nil
		})
		// The sandboxes die with their daemon: nothing would be left to
		// carry their traffic, so they must not hold ports or processes.
		eventually(t, 10*time.Second, "the crashed daemon's sandbox gone", func() error {
			if left := h.nonDaemonProcesses(); len(left) > 0 {
				return fmt.Errorf("processes left: %v", left)
			}
			return portIsFree(port)
		})
		if _, err := os.Stat(sock); err != nil {
			t.Logf("the killed daemon left no socket file (%v); the stale-socket case is not exercised", err)
		}
		if out := h.ok(t, "run", "--rm", "--", "echo", "back"); out != "back\n" {
			t.Errorf("run after the daemon was killed printed %q", out)
		}
		if c := h.inspect(t, "crashy"); c.State.Running {
			t.Errorf("inspect crashy after the daemon restarted: State %+v, want not running", c.State)
		}
		if now := h.daemonPIDs(); len(now) != 1 || now[0] == pids[0] {
			t.Errorf("daemons after the restart: %v (the killed one was %d)", now, pids[0])
		}
	})

	t.Run("owner only", func(t *testing.T) {
		h.ok(t, "ps")
		for _, c := range []struct {
			path string
			mode os.FileMode
		}{
			{filepath.Dir(sock), os.ModeDir | 0o700},
			{sock, os.ModeSocket | 0o600},
		} {
			fi, err := os.Stat(c.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode() & (os.ModeType | os.ModePerm); got != c.mode {
				t.Errorf("%s: mode %v, want %v", c.path, got, c.mode)
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != h.user.uid {
				t.Errorf("%s: owner uid %d, want %d (%s)", c.path, st.Uid, h.user.uid, testUser)
			}
		}
		state := filepath.Join(h.user.dataDir, "usernet")
		fi, err := os.Stat(state)
		if err != nil {
			t.Fatalf("state dir: %v", err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != h.user.uid || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("state dir %s: owner %d mode %v, want %d and no access for others", state, st.Uid, fi.Mode().Perm(), h.user.uid)
		}
		// Another user pointing at the socket is refused by the kernel.
		other := h.other(t)
		r := h.runAs(other, []string{h.bin, "ps", "-a"}, []string{"USERNET_SOCKET=" + sock}, nil, cmdTimeout)
		if r.err != nil {
			t.Fatalf("%s", r)
		}
		if r.code == 0 {
			t.Errorf("user %s used %s's daemon: %s", other.name, testUser, r)
		} else if err := oneLineError(r); err != nil {
			t.Errorf("%v: %s", err, r)
		}
		if left := processesOf(other.uid); len(left) > 0 {
			t.Errorf("processes of %s left: %v", other.name, left)
		}
	})

	t.Run("daemon by hand", func(t *testing.T) {
		// A second daemon with its own socket and state, without the
		// gateway-to-host-loopback mapping.
		dir := filepath.Join(h.user.runDir, "manual")
		state := filepath.Join(h.user.dataDir, "manual")
		for _, d := range []string{dir, state} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			// Registered before the daemon's stop, so it runs after it.
			t.Cleanup(func() { os.RemoveAll(d) })
			if err := os.Chown(d, int(h.user.uid), int(h.user.gid)); err != nil {
				t.Fatal(err)
			}
		}
		msock := filepath.Join(dir, "d.sock")
		d := h.startAs(t, h.user, h.bin, "daemon", "--socket", msock, "--state-dir", state, "--log-level", "debug", "--disable-host-loopback")
		eventually(t, 10*time.Second, "the daemon listening on "+msock, func() error {
			c, err := net.Dial("unix", msock)
			if err == nil {
				c.Close()
			}
			return err
		})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "host") }))
		defer srv.Close()
		port := srv.Listener.Addr().(*net.TCPAddr).Port
		envSock := []string{"USERNET_SOCKET=" + msock}
		r := h.do(t, call{args: []string{"run", "--rm", "--", "curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s:%d/", bridgeGateway, port)}, env: envSock})
		if r.code == 0 {
			t.Errorf("with --disable-host-loopback the sandbox still reached the host's loopback server: %s", r)
		}
		r = h.do(t, call{args: []string{"run", "--rm", "--", "ping", "-c1", "-W2", bridgeGateway}, env: envSock})
		if r.code != 0 {
			t.Errorf("ping to the gateway through the hand-started daemon: %s", r)
		}
		if ids := strings.Fields(h.do(t, call{args: []string{"ps", "-a", "-q"}, env: envSock}).stdout); len(ids) != 0 {
			t.Errorf("hand-started daemon lists %v after --rm runs", ids)
		}
		if err := d.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- d.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon exit after SIGTERM: %v\nstderr:\n%s", err, d.Stderr)
			}
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-d.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("daemon ignored SIGTERM for 10s")
		}
		if out := fmt.Sprint(d.Stderr); strings.Contains(out, "DATA RACE") || strings.Contains(out, "panic:") {
			t.Errorf("hand-started daemon's output shows a race or panic:\n%s", out)
		}
		if _, err := os.Stat(msock); err == nil {
			t.Errorf("daemon left its socket %s behind after SIGTERM", msock)
		}
	})
}

// startAs starts argv as a in the background, in its own process group, and
// kills the group when the test ends if it is still running.
func (h *harness) startAs(t *testing.T, a account, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{
		"HOME=" + a.home, "USER=" + a.name, "LOGNAME=" + a.name,
		"PATH=" + h.binDir + ":" + userPath,
		"XDG_RUNTIME_DIR=" + a.runDir, "XDG_DATA_HOME=" + a.dataDir,
	}
	cmd.Dir = a.home
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: []uint32{}},
		Setpgid:    true,
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("output of %v:\n%s", argv, stderr.String())
		}
	})
	return cmd
}
