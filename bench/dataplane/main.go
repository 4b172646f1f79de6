// Command dataplane measures usernet's data path against gVisor's fdbased
// endpoint, both in this process on the same kind of TAP: one TCP stream
// from a network namespace through a TAP and the path to an iperf3 server
// on the host's loopback, and back (-R), at MTU 1500 and 65520.
//
//	vnet:    vnet-header TAP -> vswitch -> stack.Gateway (netstack) -> nat relay -> 127.0.0.1
//	fdbased: plain TAP -> gVisor fdbased (stack.NewFdbased) -> netstack -> nat relay -> 127.0.0.1
//
// It needs root (it creates a namespace and enters it to create the TAP,
// NETSTACK.md R5(c)) and iperf3. Run it from the module root:
//
//	go run ./bench/dataplane -t 10 -reps 3
//
// Paths and MTUs are interleaved within each repetition, so slow drift on
// the machine spreads over all of them rather than favouring one.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/usernet/usernet/bench/internal/iperf"
	"github.com/usernet/usernet/bench/internal/netns"
	"github.com/usernet/usernet/bench/internal/probe"
	"github.com/usernet/usernet/bench/internal/procstat"
	"github.com/usernet/usernet/bench/internal/report"
	vswitch "github.com/usernet/usernet/switch"
)

const (
	nsName  = "unbench-dp"
	tapName = "tap0"
	// iperfPort is where the host's iperf3 server listens on 127.0.0.1;
	// the namespace dials the gateway address at the same port. It is
	// away from other programs' usual test ports and below the ephemeral
	// range, and checked to be free first: another iperf3 answering would
	// fake the figures.
	iperfPort = 24399
)

var (
	gatewayPrefix = netip.MustParsePrefix("10.77.0.1/24")
	guestPrefix   = netip.MustParsePrefix("10.77.0.2/24")
	gatewayMAC    = vswitch.MAC{0x02, 0x42, 0x0a, 0x4d, 0x00, 0x01}
)

// sample is one measurement, as written to -json.
type sample struct {
	Rep       int          `json:"rep"`
	Path      string       `json:"path"`
	MTU       int          `json:"mtu"`
	Direction string       `json:"direction"` // "up" namespace->host, "down" host->namespace (-R)
	Result    iperf.Result `json:"result"`
	Load      string       `json:"load_before"`
	Error     string       `json:"error,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dataplane:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		seconds  = flag.Int("t", 10, "seconds per iperf3 run")
		reps     = flag.Int("reps", 3, "repetitions (median and range are reported)")
		mtus     = flag.String("mtu", "1500,65520", "comma-separated MTUs")
		paths    = flag.String("paths", "vnet,fdbased", "comma-separated paths: vnet, fdbased")
		jsonOut  = flag.String("json", "", "also write raw samples as JSON to this file")
		verbose  = flag.Bool("v", false, "log the data path's debug messages")
		idleWait = flag.Duration("idle-wait", 20*time.Second, "longest wait for the machine to go idle before a run")
		cpuProf  = flag.String("cpuprofile", "", "write a CPU profile of this process (the data path runs in it) to this file")
	)
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates a network namespace and a TAP inside it")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 not installed (apt-get install -y iperf3): %w", err)
	}
	mtuList, err := parseInts(*mtus)
	if err != nil {
		return fmt.Errorf("-mtu: %w", err)
	}
	pathList := strings.Split(*paths, ",")
	for _, p := range pathList {
		if p != "vnet" && p != "fdbased" {
			return fmt.Errorf("-paths: unknown path %q (want vnet, fdbased)", p)
		}
	}
	// -v shows the path's own debug messages and the TAP port counters.
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	server, err := startIperfServer(ctx)
	if err != nil {
		return err
	}
	defer server.stop()

	var samples []sample
	for rep := range *reps {
		for i, mtu := range mtuList {
			for _, dir := range []string{"up", "down"} {
				// Rotate the order of paths per repetition and MTU.
				for j := range pathList {
					path := pathList[(rep+i+j)%len(pathList)]
					if ctx.Err() != nil {
						return ctx.Err()
					}
					load, _ := procstat.WaitIdle(ctx, 0.10, *idleWait)
					s := sample{Rep: rep, Path: path, MTU: mtu, Direction: dir, Load: load.String()}
					res, err := measure(ctx, path, mtu, dir == "down", *seconds, logger)
					if err != nil {
						s.Error = err.Error()
						fmt.Fprintf(os.Stderr, "rep %d %s mtu %d %s: %v\n", rep, path, mtu, dir, err)
					} else {
						s.Result = res
						fmt.Fprintf(os.Stderr, "rep %d %-7s mtu %-5d %-4s %6.2f Gbit/s (retr %d; before: %s)\n",
							rep, path, mtu, dir, res.Gbps(), res.Retransmits, s.Load)
					}
					samples = append(samples, s)
				}
			}
		}
	}
	printTable(os.Stdout, samples, mtuList, *seconds, *reps)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(samples, "", "  ")
		if err != nil {
			return fmt.Errorf("json: %w", err)
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return fmt.Errorf("json: %w", err)
		}
	}
	for _, s := range samples {
		if s.Error != "" {
			return errors.New("some runs failed (see above)")
		}
	}
	return nil
}

// measure builds a fresh namespace and path, runs one iperf3 client in the
// namespace against the gateway address and tears everything down again.
func measure(ctx context.Context, path string, mtu int, reverse bool, seconds int, logger *slog.Logger) (iperf.Result, error) {
	ns, err := netns.Add(ctx, nsName)
	if err != nil {
		return iperf.Result{}, err
	}
	defer ns.Close()
	var p io.Closer
	switch path {
	case "vnet":
		p, err = newVnetPath(ctx, ns, mtu, gatewayPrefix, logger)
	case "fdbased":
		p, err = newFdbasedPath(ctx, ns, mtu, gatewayPrefix, logger)
	}
	if err != nil {
		return iperf.Result{}, err
	}
	defer p.Close()
	if st, ok := p.(interface{ Stats() string }); ok {
		defer func() { logger.Info("vnet path", "mtu", mtu, "reverse", reverse, "stats", st.Stats()) }()
	}
	for _, argv := range [][]string{
		{"ip", "link", "set", tapName, "mtu", strconv.Itoa(mtu)},
		{"ip", "addr", "add", guestPrefix.String(), "dev", tapName},
		{"ip", "link", "set", tapName, "up"},
		{"ip", "route", "add", "default", "via", gatewayPrefix.Addr().String()},
	} {
		if err := ns.Run(ctx, argv...); err != nil {
			return iperf.Result{}, err
		}
	}
	out, err := ns.Output(ctx, iperf.ClientArgs(gatewayPrefix.Addr().String(), iperfPort, seconds, 1, reverse)...)
	if len(out) > 0 {
		// iperf3 -J exits non-zero on failure but still explains itself
		// in its JSON; prefer that message.
		res, perr := iperf.Parse(out)
		if perr == nil || err != nil {
			return res, perr
		}
	}
	if err != nil {
		return iperf.Result{}, err
	}
	return iperf.Parse(out)
}

type iperfServer struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startIperfServer runs `iperf3 -s` on the host's loopback and waits until
// it accepts connections.
func startIperfServer(ctx context.Context) (*iperfServer, error) {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(iperfPort))
	if err != nil {
		return nil, fmt.Errorf("iperf3 server: port %d is in use by another program: %w", iperfPort, err)
	}
	ln.Close()
	cmd := exec.Command("iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(iperfPort))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("iperf3 server: %w", err)
	}
	s := &iperfServer{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(s.done) }()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := probe.WaitTCP(wctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), iperfPort).String()); err != nil {
		s.stop()
		return nil, fmt.Errorf("iperf3 server: %w", err)
	}
	return s, nil
}

func (s *iperfServer) stop() {
	s.cmd.Process.Kill()
	<-s.done
}

func printTable(w io.Writer, samples []sample, mtus []int, seconds, reps int) {
	fmt.Fprintf(w, "\nOne TCP stream, iperf3 -t %d, receiver Gbit/s, median (min-max) of %d; in-process data path, same TAP kind.\n\n", seconds, reps)
	t := report.Table{Header: []string{"path", "MTU", "vnet Gbit/s", "fdbased Gbit/s", "vnet/fdbased"}}
	for _, dir := range []string{"up", "down"} {
		for _, mtu := range mtus {
			sum := map[string]report.Summary{}
			for _, p := range []string{"vnet", "fdbased"} {
				var xs []float64
				for _, s := range samples {
					if s.Path == p && s.MTU == mtu && s.Direction == dir && s.Error == "" {
						xs = append(xs, s.Result.Gbps())
					}
				}
				sum[p] = report.Summarize(xs)
			}
			name := "namespace -> host"
			if dir == "down" {
				name = "host -> namespace (-R)"
			}
			t.Add(name, strconv.Itoa(mtu), sum["vnet"].Format(2), sum["fdbased"].Format(2), report.Ratio(sum["vnet"], sum["fdbased"]))
		}
	}
	t.Write(w)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}
