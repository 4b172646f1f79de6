// Command harness runs usernet side by side with slirp4netns, pasta and
// the kernel's own veth/bridge path, on the same machine in the same run,
// and prints a markdown report with usernet's ratio to each of them.
// bench/README.md lists the workloads, what each system needs and how to
// run one workload alone. It needs root (it builds network namespaces);
// usernet itself runs as an unprivileged user created for the purpose.
//
//	go run ./bench/harness                # 3 repetitions, 10 s runs (make bench)
//	go run ./bench/harness -smoke         # 1 repetition, 2 s runs (make bench-smoke)
//	go run ./bench/harness -w 6a,6b -systems usernet,kernel -mtu 1500
//
// Before each system's repetition the harness waits for the machine to be
// idle and records how busy it was; systems and MTUs are interleaved in a
// different order in every repetition so drift does not favour one.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/usernet/usernet/bench/internal/probe"
	"github.com/usernet/usernet/bench/internal/procstat"
)

// options are the command-line settings.
type options struct {
	quick      bool
	reps       int
	seconds    int
	rrN        int
	connN      int
	sandboxes  int
	systems    []string
	mtus       []int
	only       []string // workload IDs; empty = all
	jsonOut    string
	profile    bool
	profileDir string
	usernetBin string
	src        string
	maxBusy    float64
	idleWait   time.Duration
}

func main() {
	// The harness doubles as the probe client/server it runs inside
	// namespaces, so one binary is all that has to be copied where an
	// unprivileged sandbox can execute it: a copy named "probe" is the
	// probe.
	if filepath.Base(os.Args[0]) == "probe" {
		os.Exit(probe.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	os.Exit(code)
}

func parseFlags() (options, error) {
	var (
		o       options
		systems = flag.String("systems", "usernet,usernet-bypass,slirp4netns,pasta,kernel", "systems to compare, comma-separated")
		mtus    = flag.String("mtu", "1500,65520", "MTUs, comma-separated")
		only    = flag.String("w", "", "run only these workloads (IDs as in the report: 1,2,3,4,5,6a,6b,7a,7b,8a,8b,9), comma-separated")
	)
	flag.BoolVar(&o.quick, "smoke", false, "smoke mode: 1 repetition, 2 s runs, fewer round trips and sandboxes (make bench-smoke)")
	flag.IntVar(&o.reps, "reps", 3, "repetitions; the report shows the median and range")
	flag.IntVar(&o.seconds, "t", 10, "seconds per iperf3 run")
	flag.IntVar(&o.rrN, "rr", 20000, "round trips per request/response run")
	flag.IntVar(&o.connN, "conns", 5000, "connections per connection-rate run")
	flag.IntVar(&o.sandboxes, "sandboxes", 50, "sandboxes for the memory-per-sandbox figure (0 = skip)")
	flag.StringVar(&o.jsonOut, "json", "", "write raw figures as JSON to this file")
	flag.BoolVar(&o.profile, "profile", os.Getenv("PROFILE") == "1", "fetch pprof CPU and allocation profiles from the usernet daemon (PROFILE=1)")
	flag.StringVar(&o.profileDir, "profile-dir", "bench-profiles", "where -profile writes its files")
	flag.StringVar(&o.usernetBin, "bin", "", "usernet binary to use (default: build ./cmd/usernet from -src)")
	flag.StringVar(&o.src, "src", ".", "module root to build cmd/usernet from")
	flag.Float64Var(&o.maxBusy, "max-busy", 0.10, "CPU busy fraction below which the machine counts as idle")
	flag.DurationVar(&o.idleWait, "idle-wait", 30*time.Second, "longest wait for the machine to go idle before a repetition")
	flag.Parse()
	if o.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		defaults := map[string]func(){
			"reps": func() { o.reps = 1 }, "t": func() { o.seconds = 2 }, "rr": func() { o.rrN = 2000 },
			"conns": func() { o.connN = 500 }, "sandboxes": func() { o.sandboxes = 5 }, "idle-wait": func() { o.idleWait = 2 * time.Second },
		}
		for name, apply := range defaults {
			if !set[name] {
				apply()
			}
		}
	}
	o.systems = strings.Split(*systems, ",")
	for _, s := range strings.Split(*mtus, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 576 || n > 65520 {
			return o, fmt.Errorf("-mtu: bad MTU %q (576..65520)", s)
		}
		o.mtus = append(o.mtus, n)
	}
	if *only != "" {
		o.only = strings.Split(*only, ",")
	}
	if o.reps < 1 || o.seconds < 1 {
		return o, errors.New("-reps and -t must be at least 1")
	}
	return o, nil
}

// record is one figure of one repetition, as written to -json.
type record struct {
	Rep         int     `json:"rep"`
	System      string  `json:"system"`
	MTU         int     `json:"mtu"`
	Workload    string  `json:"workload"`
	Metric      string  `json:"metric"`
	Value       float64 `json:"value"`
	LowerBetter bool    `json:"lower_better,omitempty"`
	Error       string  `json:"error,omitempty"`
}

// loadNote is how busy the machine was before one system's repetition.
type loadNote struct {
	Rep    int     `json:"rep"`
	System string  `json:"system"`
	MTU    int     `json:"mtu"`
	Load1  float64 `json:"load1"`
	Busy   float64 `json:"busy"`
	Idle   bool    `json:"became_idle"`
}

// results is everything one harness run measured.
type results struct {
	Started     time.Time          `json:"started"`
	Quick       bool               `json:"quick"`
	Reps        int                `json:"reps"`
	Seconds     int                `json:"seconds"`
	Systems     []string           `json:"systems"`
	MTUs        []int              `json:"mtus"`
	Unavailable map[string]string  `json:"unavailable"`
	Records     []record           `json:"records"`
	Loads       []loadNote         `json:"loads"`
	PerSandbox  map[string]float64 `json:"memory_per_sandbox_bytes"`
	Sandboxes   int                `json:"sandboxes"`
	Notes       []string           `json:"notes,omitempty"`
}

func run() (int, error) {
	o, err := parseFlags()
	if err != nil {
		return 2, err
	}
	if os.Geteuid() != 0 {
		return 2, errors.New("needs root: it builds network namespaces, veth pairs and a bridge (usernet itself runs as an unprivileged user)")
	}
	if err := lookPath("iperf3", "iperf3"); err != nil {
		return 2, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	workDir, err := os.MkdirTemp("", "usernet-bench-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(workDir)
	// Sandboxes run as an unprivileged user and must reach the probe.
	if err := os.Chmod(workDir, 0o755); err != nil {
		return 1, err
	}
	probePath := filepath.Join(workDir, "probe")
	exe, err := os.Executable()
	if err != nil {
		return 1, err
	}
	if err := copyFile(exe, probePath); err != nil {
		return 1, fmt.Errorf("probe: %w", err)
	}

	res := &results{Started: time.Now().UTC(), Quick: o.quick, Reps: o.reps, Seconds: o.seconds, MTUs: o.mtus,
		Unavailable: map[string]string{}, PerSandbox: map[string]float64{}, Sandboxes: o.sandboxes}
	var prof *profiler
	if o.profile {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return 1, err
		}
		prof = &profiler{dir: o.profileDir, addr: "127.0.0.1:16060"}
	}
	r := &runner{seconds: o.seconds, rrN: o.rrN, connN: o.connN, connPar: 16, probe: probePath, profiler: prof}

	var systems []System
	for _, name := range o.systems {
		var s System
		switch name {
		case "usernet", "usernet-bypass":
			u := &usernet{bin: o.usernetBin, src: o.src, workDir: workDir, probe: probePath, bypass: name == "usernet-bypass"}
			if prof != nil {
				u.pprofAddr = prof.addr
			}
			defer u.cleanup()
			s = u
		case "slirp4netns":
			s = &slirp{probe: probePath, workDir: workDir}
		case "pasta":
			s = &pasta{probe: probePath}
		case "kernel":
			s = &kernel{probe: probePath}
		default:
			return 2, fmt.Errorf("-systems: unknown system %q (usernet, usernet-bypass, slirp4netns, pasta, kernel)", name)
		}
		if err := s.Check(ctx); err != nil {
			res.Unavailable[name] = err.Error()
			fmt.Fprintf(os.Stderr, "bench: %s not available: %v\n", name, err)
			continue
		}
		systems = append(systems, s)
		res.Systems = append(res.Systems, name)
	}

	failed := measureAll(ctx, o, r, systems, res)
	if want(o, "9") && o.sandboxes > 0 {
		for _, s := range systems {
			sb, ok := s.(Sandboxer)
			if !ok || ctx.Err() != nil {
				continue
			}
			fmt.Fprintf(os.Stderr, "bench: %s: memory with %d sandboxes\n", s.Name(), o.sandboxes)
			per, err := sb.MemoryPerSandbox(ctx, o.sandboxes)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: %s: memory per sandbox: %v\n", s.Name(), err)
				res.Records = append(res.Records, record{System: s.Name(), Workload: "9", Metric: "memory per sandbox", Error: err.Error()})
				failed = true
				continue
			}
			res.PerSandbox[s.Name()] = per
		}
	}
	if prof != nil {
		res.Notes = append(res.Notes, prof.errs...)
	}

	writeReport(os.Stdout, o, res)
	if o.jsonOut != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err == nil {
			err = os.WriteFile(o.jsonOut, b, 0o644)
		}
		if err != nil {
			return 1, fmt.Errorf("json: %w", err)
		}
	}
	if ctx.Err() != nil {
		return 1, ctx.Err()
	}
	if failed {
		return 1, errors.New("some workloads failed (see the report); the figures of the others are valid")
	}
	return 0, nil
}

// measureAll runs every repetition: for each, every (system, MTU) pair in
// an order rotated by the repetition number. It reports whether anything
// failed.
func measureAll(ctx context.Context, o options, r *runner, systems []System, res *results) bool {
	type slot struct {
		s   System
		mtu int
	}
	var order []slot
	for _, mtu := range o.mtus {
		for _, s := range systems {
			order = append(order, slot{s, mtu})
		}
	}
	failed := false
	for rep := range o.reps {
		for i := range order {
			if ctx.Err() != nil {
				return true
			}
			sl := order[(i+rep)%len(order)]
			name := sl.s.Name()
			load, idle := procstat.WaitIdle(ctx, o.maxBusy, o.idleWait)
			res.Loads = append(res.Loads, loadNote{Rep: rep, System: name, MTU: sl.mtu, Load1: load.Load1, Busy: load.Busy, Idle: idle})
			fmt.Fprintf(os.Stderr, "bench: rep %d %s mtu %d (before: %s)\n", rep, name, sl.mtu, load)
			if r.profiler != nil {
				r.profiler.mtu = sl.mtu
			}
			if !runSystem(ctx, o, r, sl.s, sl.mtu, rep, res) {
				failed = true
			}
		}
	}
	return failed
}

// runSystem sets one system up at one MTU, runs the selected workloads
// and tears it down. It reports whether everything succeeded.
func runSystem(ctx context.Context, o options, r *runner, s System, mtu, rep int, res *results) bool {
	name := s.Name()
	add := func(w string, m metric, err error) {
		rec := record{Rep: rep, System: name, MTU: mtu, Workload: w, Metric: m.Name, Value: m.Value, LowerBetter: m.LowerBetter}
		if err != nil {
			rec.Error = err.Error()
		}
		res.Records = append(res.Records, rec)
	}
	if err := checkHostPorts(ctx, 30*time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s mtu %d: %v\n", name, mtu, err)
		add("setup", metric{Name: "setup"}, err)
		return false
	}
	env, err := s.Setup(ctx, mtu)
	if u := (unavailable{}); errors.As(err, &u) {
		res.Unavailable[fmt.Sprintf("%s at MTU %d", name, mtu)] = u.Error()
		fmt.Fprintf(os.Stderr, "bench: %s mtu %d: not available: %v\n", name, mtu, u)
		return true
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s mtu %d: setup: %v\n", name, mtu, err)
		add("setup", metric{Name: "setup"}, err)
		return false
	}
	defer func() {
		if err := env.Teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s mtu %d: teardown: %v\n", name, mtu, err)
		}
	}()
	hs, err := startHostServers(ctx, env, r.probe)
	if err != nil {
		add("setup", metric{Name: "setup"}, err)
		fmt.Fprintf(os.Stderr, "bench: %s mtu %d: host servers: %v\n", name, mtu, err)
		return false
	}
	defer hs.stop()

	ok := true
	if pid := env.EmulatorPID(); pid != 0 && want(o, "9") {
		time.Sleep(time.Second)
		if rss, err := procstat.RSS(pid); err == nil {
			add("9", metric{Name: "emulator RSS idle MiB", Value: mib(rss), LowerBetter: true}, nil)
		}
	}
	for _, w := range workloads() {
		if !want(o, w.ID) && !(w.ID == "1" && want(o, "10")) {
			continue
		}
		if ctx.Err() != nil {
			return false
		}
		ms, err := w.Run(ctx, r, env)
		switch {
		case errors.Is(err, errSkip):
			continue
		case err != nil:
			ok = false
			fmt.Fprintf(os.Stderr, "bench: %s mtu %d: (%s) %s: %v\n", name, mtu, w.ID, w.Name, err)
			add(w.ID, metric{Name: "error"}, err)
			continue
		}
		var parts []string
		for _, m := range ms {
			add(w.ID, m, nil)
			parts = append(parts, fmt.Sprintf("%s %.3g", m.Name, m.Value))
		}
		fmt.Fprintf(os.Stderr, "bench:   (%s) %s: %s\n", w.ID, w.Name, strings.Join(parts, ", "))
	}
	return ok
}

// want reports whether workload id was selected with -w (all are by
// default). The emulator figures (9, 10) come with workloads 1 and 7b.
func want(o options, id string) bool {
	return len(o.only) == 0 || slices.Contains(o.only, id)
}

// hostServers are the host-side servers for namespace->host workloads.
type hostServers struct{ iperf, echo *proc }

func startHostServers(ctx context.Context, e Env, probePath string) (*hostServers, error) {
	bind := e.HostBind()
	ip, err := startProc(exec.Command("iperf3", "-s", "-B", bind, "-p", strconv.Itoa(hostSideIperf)))
	if err != nil {
		return nil, err
	}
	echo, err := startProc(exec.Command(probePath, "serve",
		"-tcp", joinHostPort(bind, hostSideTCP), "-udp", joinHostPort(bind, hostSideUDP)))
	if err != nil {
		ip.stop()
		return nil, err
	}
	hs := &hostServers{iperf: ip, echo: echo}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, port := range []int{hostSideIperf, hostSideTCP} {
		if err := probe.WaitTCP(wctx, joinHostPort(bind, port)); err != nil {
			hs.stop()
			return nil, fmt.Errorf("host servers: %w", err)
		}
	}
	return hs, nil
}

func (h *hostServers) stop() {
	h.iperf.stop()
	h.echo.stop()
}

// copyFile copies src to dst with mode 0755: the probe (this executable)
// and the usernet binary, where the bench user can execute them.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
