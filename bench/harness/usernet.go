package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/usernet/usernet/bench/internal/procstat"
)

// usernet drives the real CLI as an unprivileged user, the way a user
// would: a daemon of its own (USERNET_SOCKET/XDG dirs under the harness's
// work dir), a network with the MTU under test, sandbox 0 running the
// servers with its ports published (-p), sandbox 1 on the same network as
// the namespace-to-namespace client. Commands inside sandboxes go through
// `usernet exec`.
//
// The user is benchUser, created on first use (a dedicated account, so
// that the harness can end every process the daemon left behind without
// touching anybody else's). /dev/net/tun is opened to everyone (0666) for
// the run, as the sandboxes' agents must create TAPs, and restored after.
type usernet struct {
	bin       string // the usernet binary; built by Check when empty
	src       string // module root to build from
	workDir   string
	probe     string
	pprofAddr string // when set, the daemon gets USERNET_PPROF=pprofAddr
	// bypass runs every sandbox with --bypass: the system
	// "usernet-bypass", which differs from "usernet" in the paths to the
	// host and not at all in the published ones.
	bypass bool

	uid, gid uint32
	tunMode  os.FileMode
	tunSet   bool
	runs     int
}

const (
	benchUser      = "usernet-bench"
	usernetNetwork = "unbench"
	cliTimeout     = 60 * time.Second
)

// Name is "usernet", or "usernet-bypass" for the --bypass variant.
func (u *usernet) Name() string {
	if u.bypass {
		return "usernet-bypass"
	}
	return "usernet"
}

// runFlags are the flags every sandbox of this system starts with.
func (u *usernet) runFlags() []string {
	if u.bypass {
		return []string{"--bypass"}
	}
	return nil
}

// Check builds cmd/usernet (unless -usernet names a binary), makes sure
// the bench user exists and /dev/net/tun is usable, and runs a daemon
// once to see that the CLI answers. Until the CLI works this is where
// usernet turns into "not available: <reason>".
func (u *usernet) Check(ctx context.Context) error {
	// The binary is built or copied into the work dir, where the bench
	// user can execute it wherever the checkout lives.
	bin := filepath.Join(u.workDir, "usernet")
	if u.bin == "" {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/usernet")
		cmd.Dir = u.src
		// Static, as make build makes it: the RSS figures are the shipped binary's.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cmd/usernet does not build: %s", firstLine(strings.TrimSpace(string(out))))
		}
	} else if err := copyFile(u.bin, bin); err != nil {
		return fmt.Errorf("-bin: %w", err)
	}
	u.bin = bin
	if err := u.ensureUser(ctx); err != nil {
		return err
	}
	fi, err := os.Stat("/dev/net/tun")
	if err != nil {
		return fmt.Errorf("no /dev/net/tun: %w", err)
	}
	if fi.Mode().Perm() != 0o666 {
		u.tunMode, u.tunSet = fi.Mode().Perm(), true
		if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
			return fmt.Errorf("chmod /dev/net/tun: %w", err)
		}
	}
	e, err := u.startDaemon(ctx)
	if err != nil {
		return err
	}
	defer e.stopDaemon()
	if _, err := e.cli(ctx, "network", "ls"); err != nil {
		return fmt.Errorf("the CLI does not answer: %w", err)
	}
	return nil
}

func (u *usernet) ensureUser(ctx context.Context) error {
	acct, err := user.Lookup(benchUser)
	if err != nil {
		if out, err := exec.CommandContext(ctx, "useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", benchUser).CombinedOutput(); err != nil {
			return fmt.Errorf("useradd %s: %v: %s", benchUser, err, bytes.TrimSpace(out))
		}
		if acct, err = user.Lookup(benchUser); err != nil {
			return err
		}
	}
	uid, err1 := strconv.ParseUint(acct.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(acct.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("user %s: odd uid/gid %s/%s", benchUser, acct.Uid, acct.Gid)
	}
	u.uid, u.gid = uint32(uid), uint32(gid)
	return nil
}

// cleanup restores /dev/net/tun and ends whatever the bench user still
// runs (sandboxes whose daemon died). Only the harness uses that account.
func (u *usernet) cleanup() {
	if u.uid != 0 {
		killUser(u.uid)
	}
	if u.tunSet {
		if err := os.Chmod("/dev/net/tun", u.tunMode); err != nil {
			fmt.Fprintf(os.Stderr, "bench: restore /dev/net/tun mode: %v\n", err)
		}
	}
}

// usernetEnv is one daemon with its network and two sandboxes.
type usernetEnv struct {
	u         *usernet
	dir       string
	env       []string
	daemon    *proc
	network   string
	gateway   string
	peer      string
	sandboxes []string
}

// startDaemon makes fresh XDG directories and starts `usernet daemon`
// in them as the bench user, waiting for its socket.
func (u *usernet) startDaemon(ctx context.Context) (*usernetEnv, error) {
	u.runs++
	dir := filepath.Join(u.workDir, u.Name()+"-"+strconv.Itoa(u.runs))
	home, run, data := filepath.Join(dir, "home"), filepath.Join(dir, "run"), filepath.Join(dir, "data")
	for _, d := range []string{dir, home, run, data} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chown(d, int(u.uid), int(u.gid)); err != nil {
			return nil, err
		}
	}
	e := &usernetEnv{u: u, dir: dir, env: []string{
		"HOME=" + home, "USER=" + benchUser, "LOGNAME=" + benchUser,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"XDG_RUNTIME_DIR=" + run, "XDG_DATA_HOME=" + data,
		"USERNET_SOCKET=" + filepath.Join(run, "usernet.sock"),
		"LANG=C.UTF-8",
	}}
	cmd := e.command(context.Background(), "daemon")
	if u.pprofAddr != "" {
		cmd.Env = append(cmd.Env, "USERNET_PPROF="+u.pprofAddr)
	}
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	e.daemon, err = startProc(cmd)
	logf.Close()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(run, "usernet.sock")); err == nil {
			return e, nil
		}
		if ok, _ := e.daemon.exited(); ok {
			return nil, fmt.Errorf("usernet daemon exited: %s", e.daemonLog())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			e.stopDaemon()
			return nil, fmt.Errorf("usernet daemon: no socket after 15s: %s", e.daemonLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *usernetEnv) daemonLog() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "daemon.log"))
	return firstLine(strings.TrimSpace(string(b)))
}

// command returns `usernet args...` run as the bench user with this
// daemon's environment.
func (e *usernetEnv) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, e.u.bin, args...)
	cmd.Env = slices.Clone(e.env)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: e.u.uid, Gid: e.u.gid, Groups: []uint32{}},
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// cli runs a usernet command to completion and returns its stdout.
func (e *usernetEnv) cli(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	out, err := runOut(e.command(ctx, args...))
	return string(out), err
}

func (e *usernetEnv) stopDaemon() {
	if e.daemon != nil {
		e.daemon.stop()
	}
}

func (u *usernet) Setup(ctx context.Context, mtu int) (Env, error) {
	e, err := u.startDaemon(ctx)
	if err != nil {
		return nil, fmt.Errorf("usernet: %w", err)
	}
	if err := e.build(ctx, mtu); err != nil {
		return nil, errors.Join(fmt.Errorf("usernet: %w", err), e.Teardown())
	}
	return e, nil
}

func (e *usernetEnv) build(ctx context.Context, mtu int) error {
	if err := e.createNetwork(ctx, mtu); err != nil {
		return err
	}
	run := append([]string{"run", "-d", "--name", "unbench0", "--network", e.network}, e.u.runFlags()...)
	run = append(run,
		"-p", fmt.Sprintf("127.0.0.1:%d:%d", hostIperfPort, nsIperfPort),
		"-p", fmt.Sprintf("127.0.0.1:%d:%d", hostTCPEcho, nsTCPEcho),
		"-p", fmt.Sprintf("127.0.0.1:%d:%d/udp", hostUDPEcho, nsUDPEcho),
		"--")
	if _, err := e.cli(ctx, append(run, serverArgv(e.u.probe)...)...); err != nil {
		return err
	}
	e.sandboxes = append(e.sandboxes, "unbench0")
	run = append([]string{"run", "-d", "--name", "unbench1", "--network", e.network}, e.u.runFlags()...)
	if _, err := e.cli(ctx, append(run, "--", "sleep", "infinity")...); err != nil {
		return err
	}
	e.sandboxes = append(e.sandboxes, "unbench1")
	var err error
	if e.peer, e.gateway, err = e.address(ctx, "unbench0"); err != nil {
		return err
	}
	return waitServers(ctx, e, e.u.probe, nil)
}

// createNetwork creates the bench network (a user-defined bridge network
// from the next free pool, 172.18.0.0/16 on a fresh daemon) with the MTU
// under test, as `docker network create -o com.docker.network.driver.mtu=M`.
func (e *usernetEnv) createNetwork(ctx context.Context, mtu int) error {
	if _, err := e.cli(ctx, "network", "create", "--opt", "com.docker.network.driver.mtu="+strconv.Itoa(mtu), usernetNetwork); err != nil {
		return fmt.Errorf("network create with MTU %d: %w", mtu, err)
	}
	e.network = usernetNetwork
	return nil
}

// address returns a sandbox's address and gateway on the bench network
// from `usernet inspect` (Docker's JSON shape).
func (e *usernetEnv) address(ctx context.Context, name string) (ip, gw string, err error) {
	out, err := e.cli(ctx, "inspect", name)
	if err != nil {
		return "", "", err
	}
	var cs []struct {
		NetworkSettings struct {
			Networks map[string]struct {
				IPAddress string
				Gateway   string
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &cs); err != nil || len(cs) != 1 {
		return "", "", fmt.Errorf("usernet inspect %s: want a JSON array of one sandbox, got %q (%v)", name, clip([]byte(out)), err)
	}
	n, ok := cs[0].NetworkSettings.Networks[e.network]
	if !ok || n.IPAddress == "" || n.Gateway == "" {
		return "", "", fmt.Errorf("usernet inspect %s: no address on network %s", name, e.network)
	}
	return n.IPAddress, n.Gateway, nil
}

func (e *usernetEnv) Command(ctx context.Context, ns int, argv ...string) *exec.Cmd {
	return e.command(ctx, append([]string{"exec", "unbench" + strconv.Itoa(ns)}, argv...)...)
}

func (e *usernetEnv) HostAddr() string { return e.gateway }
func (*usernetEnv) HostBind() string   { return "127.0.0.1" }

func (*usernetEnv) Published(_ string, nsPort int) (string, bool) { return publishedLoopback(nsPort) }

func (e *usernetEnv) Peer() (string, bool) { return e.peer, e.peer != "" }
func (e *usernetEnv) EmulatorPID() int     { return e.daemon.pid() }

// Teardown removes the sandboxes and the network through the CLI (so a
// broken removal shows up as an error), then stops the daemon.
func (e *usernetEnv) Teardown() error {
	ctx := context.Background()
	var errs []error
	if len(e.sandboxes) > 0 {
		if _, err := e.cli(ctx, append([]string{"rm", "-f"}, e.sandboxes...)...); err != nil {
			errs = append(errs, err)
		}
	}
	if e.network == usernetNetwork {
		if _, err := e.cli(ctx, "network", "rm", usernetNetwork); err != nil {
			errs = append(errs, err)
		}
	}
	e.stopDaemon()
	killUser(e.u.uid)
	return errors.Join(errs...)
}

// MemoryPerSandbox starts a daemon with the bench network, measures its
// RSS, adds n idle sandboxes and returns the growth per sandbox.
func (u *usernet) MemoryPerSandbox(ctx context.Context, n int) (float64, error) {
	e, err := u.startDaemon(ctx)
	if err != nil {
		return 0, err
	}
	defer e.Teardown()
	if err := e.createNetwork(ctx, 1500); err != nil {
		return 0, err
	}
	time.Sleep(time.Second)
	before, err := procstat.RSS(e.daemon.pid())
	if err != nil {
		return 0, err
	}
	for i := range n {
		name := "unbench-m" + strconv.Itoa(i)
		run := append([]string{"run", "-d", "--name", name, "--network", e.network}, e.u.runFlags()...)
		if _, err := e.cli(ctx, append(run, "--", "sleep", "infinity")...); err != nil {
			return 0, err
		}
		e.sandboxes = append(e.sandboxes, name)
	}
	time.Sleep(2 * time.Second)
	after, err := procstat.RSS(e.daemon.pid())
	if err != nil {
		return 0, err
	}
	return (float64(after) - float64(before)) / float64(n), nil
}

// killUser SIGKILLs every process of uid: only the harness runs as the
// bench user, so these are sandboxes and daemons it started.
func killUser(uid uint32) {
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+ent.Name(), &st) != nil || st.Uid != uid {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
