package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a background process the harness started (a server, an
// emulator). It runs in its own process group, dies with the harness
// (Pdeathsig), and stop ends the whole group.
type proc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan struct{}
	err    error
}

// startProc starts cmd in the background. Stdout is discarded; stderr is
// kept for error messages.
func startProc(cmd *exec.Cmd) (*proc, error) {
	p := &proc{cmd: cmd, stderr: new(bytes.Buffer), done: make(chan struct{})}
	if cmd.Stderr == nil {
		cmd.Stderr = p.stderr
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Args[0], err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended, with its stderr.
func (p *proc) exited() (bool, string) {
	select {
	case <-p.done:
		return true, strings.TrimSpace(p.stderr.String())
	default:
		return false, ""
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after a grace
// period, and waits for the process.
func (p *proc) stop() {
	if ok, _ := p.exited(); ok {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// runOut runs cmd and returns its stdout; on failure the error carries
// stderr.
func runOut(cmd *exec.Cmd) ([]byte, error) {
	var stderr bytes.Buffer
	if cmd.Stderr == nil {
		cmd.Stderr = &stderr
	}
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(string(clip(out)))
		}
		return out, fmt.Errorf("%s: %w: %s", strings.Join(clipArgs(cmd.Args), " "), err, msg)
	}
	return out, nil
}

func clip(b []byte) []byte {
	if len(b) > 500 {
		return append(b[:500:500], "..."...)
	}
	return b
}

func clipArgs(a []string) []string {
	if len(a) > 12 {
		return append(a[:12:12], "...")
	}
	return a
}

// serverArgv is the command that runs the in-namespace servers.
func serverArgv(probe string) []string {
	return []string{probe, "serve",
		"-tcp", ":" + strconv.Itoa(nsTCPEcho),
		"-udp", ":" + strconv.Itoa(nsUDPEcho),
		"-iperf3", strconv.Itoa(nsIperfPort)}
}

// waitServers waits until the servers in namespace 0 accept connections,
// checking from inside the namespace (a proxy in front may accept a
// connection before the server behind it is up).
func waitServers(ctx context.Context, e Env, probe string, server *proc) error {
	for _, port := range []int{nsTCPEcho, nsIperfPort} {
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if _, err := runOut(e.Command(ctx, 0, probe, "wait", "-addr", addr, "-timeout", "15s")); err != nil {
			if server != nil {
				if ok, msg := server.exited(); ok {
					return fmt.Errorf("servers in the namespace exited: %s", msg)
				}
			}
			return fmt.Errorf("servers in the namespace: %w", err)
		}
	}
	return nil
}

// lookPath reports a missing program with the package that provides it.
func lookPath(prog, pkg string) error {
	if _, err := exec.LookPath(prog); err != nil {
		return fmt.Errorf("%s not installed (apt-get install -y %s)", prog, pkg)
	}
	return nil
}

// removeStale deletes a file left by an earlier run (a unix socket).
func removeStale(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "bench: remove %s: %v\n", path, err)
	}
}

// checkHostPorts waits up to timeout for every port the harness uses on
// the host to be free on all addresses, TCP and UDP alike, and names the
// first that stays taken. Listeners set SO_REUSEADDR (Go's default), so
// connections in TIME_WAIT do not count as taken.
func checkHostPorts(ctx context.Context, timeout time.Duration) error {
	ports := []int{hostIperfPort, hostTCPEcho, hostUDPEcho, hostSideIperf, hostSideTCP, hostSideUDP}
	deadline := time.Now().Add(timeout)
	for {
		busy := ""
		for _, p := range ports {
			addr := ":" + strconv.Itoa(p)
			if ln, err := net.Listen("tcp", addr); err != nil {
				busy = "tcp " + addr
				break
			} else {
				ln.Close()
			}
			if pc, err := net.ListenPacket("udp", addr); err != nil {
				busy = "udp " + addr
				break
			} else {
				pc.Close()
			}
		}
		if busy == "" {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("host port %s is in use by another program (see ss -ltnup); the harness needs it free", busy)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
