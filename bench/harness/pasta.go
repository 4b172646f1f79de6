package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"github.com/usernet/usernet/bench/internal/netns"
)

// pasta is passt's namespace mode attached to a namespace the harness
// made (--netns, --config-net). The namespace copies the host's address
// and routes; the host's default gateway address inside it reaches the
// host (pasta maps it to the host's loopback unless --no-map-gw). Ports
// are published with -t/-u; automatic forwarding (-T/-U auto) is off so
// that namespace->host traffic takes the tap path the other systems take.
//
// pasta drops to "nobody" by default before it joins the namespace, which
// fails for a namespace root made; --runas 0 keeps it root here.
type pasta struct {
	probe string
	gw    string // host's default gateway, found by Check
}

const pastaNS = "unbench-p0"

func (*pasta) Name() string { return "pasta" }

func (p *pasta) Check(ctx context.Context) error {
	if err := lookPath("pasta", "passt"); err != nil {
		return err
	}
	gw, err := defaultGateway(ctx)
	if err != nil {
		return fmt.Errorf("pasta needs a host default route to copy: %w", err)
	}
	p.gw = gw
	return nil
}

func defaultGateway(ctx context.Context) (string, error) {
	out, err := runOut(exec.CommandContext(ctx, "ip", "-j", "-4", "route", "show", "default"))
	if err != nil {
		return "", err
	}
	var routes []struct {
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return "", fmt.Errorf("ip route: %w", err)
	}
	for _, r := range routes {
		if r.Gateway != "" {
			return r.Gateway, nil
		}
	}
	return "", errors.New("no IPv4 default route with a gateway")
}

type pastaEnv struct {
	ns     *netns.NS
	pasta  *proc
	server *proc
	gw     string
}

func (p *pasta) Setup(ctx context.Context, mtu int) (Env, error) {
	e := &pastaEnv{gw: p.gw}
	if err := p.build(ctx, e, mtu); err != nil {
		return nil, errors.Join(fmt.Errorf("pasta: %w", err), e.Teardown())
	}
	return e, nil
}

func (p *pasta) build(ctx context.Context, e *pastaEnv, mtu int) error {
	var err error
	if e.ns, err = netns.Add(ctx, pastaNS); err != nil {
		return err
	}
	if e.pasta, err = startPasta(ctx, e.ns, mtu, []string{
		"-t", fmt.Sprintf("%d:%d", hostIperfPort, nsIperfPort),
		"-t", fmt.Sprintf("%d:%d", hostTCPEcho, nsTCPEcho),
		"-u", fmt.Sprintf("%d:%d", hostUDPEcho, nsUDPEcho),
	}); err != nil {
		return err
	}
	if e.server, err = startProc(e.ns.Command(context.Background(), serverArgv(p.probe)...)); err != nil {
		return err
	}
	return waitServers(ctx, e, p.probe, e.server)
}

// startPasta runs pasta in the foreground for ns and waits until it has
// configured an IPv4 address in it.
func startPasta(ctx context.Context, ns *netns.NS, mtu int, forwards []string) (*proc, error) {
	args := []string{"-f", "-q", "--runas", "0", "--config-net", "-m", strconv.Itoa(mtu), "-T", "none", "-U", "none"}
	if len(forwards) == 0 {
		forwards = []string{"-t", "none", "-u", "none"}
	}
	args = append(append(args, forwards...), "--netns", ns.Path())
	p, err := startProc(exec.Command("pasta", args...))
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := ns.Output(ctx, "ip", "-4", "-o", "addr", "show", "scope", "global")
		if err == nil && len(out) > 0 {
			return p, nil
		}
		if ok, msg := p.exited(); ok {
			return nil, fmt.Errorf("pasta exited: %s", msg)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, errors.New("pasta did not configure the namespace in 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *pastaEnv) Command(ctx context.Context, _ int, argv ...string) *exec.Cmd {
	return e.ns.Command(ctx, argv...)
}

func (e *pastaEnv) HostAddr() string { return e.gw }
func (*pastaEnv) HostBind() string   { return "127.0.0.1" }

func (*pastaEnv) Published(_ string, nsPort int) (string, bool) { return publishedLoopback(nsPort) }

func (*pastaEnv) Peer() (string, bool) { return "", false }
func (e *pastaEnv) EmulatorPID() int   { return e.pasta.pid() }

func (e *pastaEnv) Teardown() error {
	if e.server != nil {
		e.server.stop()
	}
	if e.pasta != nil {
		e.pasta.stop()
	}
	if e.ns != nil {
		return e.ns.Close()
	}
	return nil
}

// MemoryPerSandbox starts n namespaces with one pasta each and returns
// their average RSS.
func (p *pasta) MemoryPerSandbox(ctx context.Context, n int) (float64, error) {
	return perProcessRSS(ctx, n, "unbench-pm", func(ns *netns.NS) (*proc, error) {
		return startPasta(ctx, ns, 1500, nil)
	})
}
