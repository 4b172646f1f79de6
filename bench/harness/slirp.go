package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/usernet/usernet/bench/internal/netns"
	"github.com/usernet/usernet/bench/internal/procstat"
)

// slirp is slirp4netns (libslirp) attached to a namespace the harness
// made, configured by slirp4netns itself (--configure: 10.0.2.100/24,
// gateway 10.0.2.2 which reaches the host's loopback). Ports are
// published through its JSON API socket (add_hostfwd), the way
// rootlesskit's slirp4netns port driver does it.
type slirp struct {
	probe   string
	workDir string
}

const slirpNS = "unbench-s0"

func (*slirp) Name() string { return "slirp4netns" }

func (*slirp) Check(context.Context) error { return lookPath("slirp4netns", "slirp4netns") }

type slirpEnv struct {
	ns     *netns.NS
	slirp  *proc
	server *proc
}

func (s *slirp) Setup(ctx context.Context, mtu int) (Env, error) {
	e := &slirpEnv{}
	if err := s.build(ctx, e, mtu); err != nil {
		return nil, errors.Join(fmt.Errorf("slirp4netns: %w", err), e.Teardown())
	}
	return e, nil
}

func (s *slirp) build(ctx context.Context, e *slirpEnv, mtu int) error {
	var err error
	if e.ns, err = netns.Add(ctx, slirpNS); err != nil {
		return err
	}
	sock := filepath.Join(s.workDir, "slirp4netns.sock")
	if e.slirp, err = startSlirp(ctx, e.ns, mtu, sock); err != nil {
		return err
	}
	for _, f := range []struct {
		proto          string
		host, guestTCP int
	}{
		{"tcp", hostIperfPort, nsIperfPort},
		{"tcp", hostTCPEcho, nsTCPEcho},
		{"udp", hostUDPEcho, nsUDPEcho},
	} {
		if err := slirpHostFwd(sock, f.proto, f.host, f.guestTCP); err != nil {
			return err
		}
	}
	if e.server, err = startProc(e.ns.Command(context.Background(), serverArgv(s.probe)...)); err != nil {
		return err
	}
	return waitServers(ctx, e, s.probe, e.server)
}

// startSlirp runs slirp4netns for ns and waits for its ready signal
// (--ready-fd), after which tap0 is configured.
func startSlirp(ctx context.Context, ns *netns.NS, mtu int, sock string) (*proc, error) {
	if sock != "" {
		removeStale(sock)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	args := []string{"--configure", "--mtu=" + strconv.Itoa(mtu), "--ready-fd=3", "--netns-type=path"}
	if sock != "" {
		args = append(args, "--api-socket", sock)
	}
	cmd := exec.Command("slirp4netns", append(args, ns.Path(), "tap0")...)
	cmd.ExtraFiles = []*os.File{w}
	p, err := startProc(cmd)
	w.Close()
	if err != nil {
		return nil, err
	}
	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := r.Read(b)
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("no ready signal in 10s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		p.stop()
		_, msg := p.exited()
		return nil, fmt.Errorf("slirp4netns did not start: %v: %s", err, msg)
	}
	return p, nil
}

// slirpHostFwd publishes 127.0.0.1:host to the namespace's guest port
// through the API socket.
func slirpHostFwd(sock, proto string, host, guest int) error {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := map[string]any{"execute": "add_hostfwd", "arguments": map[string]any{
		"proto": proto, "host_addr": "127.0.0.1", "host_port": host, "guest_port": guest,
	}}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return fmt.Errorf("add_hostfwd: %w", err)
	}
	var resp struct {
		Return map[string]any `json:"return"`
		Error  *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return fmt.Errorf("add_hostfwd: %w", err)
	}
	if resp.Error != nil {
		return fmt.Errorf("add_hostfwd %s %d:%d: %s", proto, host, guest, resp.Error.Desc)
	}
	return nil
}

func (e *slirpEnv) Command(ctx context.Context, _ int, argv ...string) *exec.Cmd {
	return e.ns.Command(ctx, argv...)
}

func (*slirpEnv) HostAddr() string { return "10.0.2.2" }
func (*slirpEnv) HostBind() string { return "127.0.0.1" }

func (*slirpEnv) Published(proto string, nsPort int) (string, bool) {
	return publishedLoopback(nsPort)
}

func (*slirpEnv) Peer() (string, bool) { return "", false }
func (e *slirpEnv) EmulatorPID() int   { return e.slirp.pid() }

func (e *slirpEnv) Teardown() error {
	if e.server != nil {
		e.server.stop()
	}
	if e.slirp != nil {
		e.slirp.stop()
	}
	if e.ns != nil {
		return e.ns.Close()
	}
	return nil
}

// MemoryPerSandbox starts n namespaces with one slirp4netns each (as a
// rootless runtime does: one emulator per sandbox) and returns their
// average RSS.
func (s *slirp) MemoryPerSandbox(ctx context.Context, n int) (float64, error) {
	return perProcessRSS(ctx, n, "unbench-sm", func(ns *netns.NS) (*proc, error) {
		return startSlirp(ctx, ns, 1500, "")
	})
}

// perProcessRSS builds n namespaces, starts one emulator for each with
// start, lets them settle and returns their mean RSS in bytes.
func perProcessRSS(ctx context.Context, n int, prefix string, start func(*netns.NS) (*proc, error)) (float64, error) {
	var (
		nss   []*netns.NS
		procs []*proc
	)
	defer func() {
		for _, p := range procs {
			p.stop()
		}
		for _, ns := range nss {
			ns.Close()
		}
	}()
	for i := range n {
		ns, err := netns.Add(ctx, prefix+strconv.Itoa(i))
		if err != nil {
			return 0, err
		}
		nss = append(nss, ns)
		p, err := start(ns)
		if err != nil {
			return 0, err
		}
		procs = append(procs, p)
	}
	time.Sleep(time.Second)
	var total float64
	for _, p := range procs {
		rss, err := procstat.RSS(p.pid())
		if err != nil {
			return 0, err
		}
		total += float64(rss)
	}
	return total / float64(n), nil
}

// publishedLoopback is where the emulators publish nsPort on the host.
func publishedLoopback(nsPort int) (string, bool) {
	host := map[int]int{nsIperfPort: hostIperfPort, nsTCPEcho: hostTCPEcho, nsUDPEcho: hostUDPEcho}[nsPort]
	if host == 0 {
		return "", false
	}
	return "127.0.0.1:" + strconv.Itoa(host), true
}
