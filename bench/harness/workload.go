package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"time"

	"github.com/usernet/usernet/bench/internal/iperf"
	"github.com/usernet/usernet/bench/internal/probe"
)

// metric is one figure a workload produced.
type metric struct {
	Name  string  // "Gbit/s", "p99 us", ...
	Value float64 //
	// LowerBetter marks latencies, errors and costs, for the reader of the
	// ratio columns.
	LowerBetter bool
}

// workload is one line of the workload list: an ID as the issue numbers
// them, a description, and the function that measures it on an Env.
// A workload that does not apply to a system (namespace-to-namespace on
// slirp4netns, which has one namespace per emulator) returns errSkip.
type workload struct {
	ID   string
	Name string
	Run  func(ctx context.Context, r *runner, e Env) ([]metric, error)
}

// errSkip marks a workload that does not apply to a system.
var errSkip = fmt.Errorf("not applicable")

// runner carries the settings workloads need.
type runner struct {
	seconds  int    // iperf3 -t
	rrN      int    // request/response round trips
	connN    int    // connections for the connection rate
	connPar  int    // connections in flight
	probe    string // path of the probe binary
	profiler *profiler
}

// workloads returns the list in report order.
func workloads() []workload {
	return []workload{
		{"1", "TCP namespace->host, 1 stream", runNSToHost},
		{"2", "TCP host->namespace (-R), 1 stream", runHostToNS},
		{"3", "TCP host->namespace via published port", runPublished},
		{"4", "TCP namespace->namespace, same network", runNSToNS},
		{"5", "TCP namespace->host, 4 streams", runNSToHost4},
		{"6a", "TCP RR 64 B via published port", runTCPRRPublished},
		{"6b", "TCP RR 64 B namespace->host", runTCPRRHost},
		{"7a", "TCP connections via published port", runConnPublished},
		{"7b", "TCP connections namespace->host", runConnHost},
		{"8a", "UDP RR 64 B via published port", runUDPRRPublished},
		{"8b", "UDP RR 64 B namespace->host", runUDPRRHost},
	}
}

// iperfRun runs one iperf3 client (cmd) while watching the emulator: its
// CPU time and the peak of its RSS over the run.
// The peak RSS is reported for workload 1 only (tag "w1"): it is the
// issue's "peak under (1)", and one row of it is enough.
func iperfRun(ctx context.Context, r *runner, e Env, cmd *exec.Cmd, profileTag string) (iperf.Result, []metric, error) {
	pid := e.EmulatorPID()
	var (
		cpu0 time.Duration
		peak interface{ Stop() uint64 }
	)
	if pid != 0 {
		cpu0, _ = procstatCPU(pid)
		if profileTag == "w1" {
			peak = startPeak(pid)
		}
	}
	stopProfile := r.profiler.start(ctx, e, profileTag, r.seconds)
	out, err := runOut(cmd)
	stopProfile()
	var peakRSS uint64
	if peak != nil {
		peakRSS = peak.Stop()
	}
	res, perr := iperf.Parse(out)
	if perr != nil {
		if err != nil && len(out) == 0 {
			return res, nil, err
		}
		return res, nil, perr
	}
	ms := []metric{{Name: "Gbit/s", Value: res.Gbps()}}
	if pid != 0 {
		cpu1, err := procstatCPU(pid)
		if err == nil && res.Bytes > 0 {
			gbit := float64(res.Bytes) * 8 / 1e9
			ms = append(ms, metric{Name: "emulator CPU s/Gbit", Value: (cpu1 - cpu0).Seconds() / gbit, LowerBetter: true})
		}
		if peakRSS > 0 {
			ms = append(ms, metric{Name: "emulator peak RSS MiB", Value: mib(peakRSS), LowerBetter: true})
		}
	}
	return res, ms, nil
}

func iperfCtx(ctx context.Context, seconds int) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, time.Duration(seconds+30)*time.Second)
}

func runNSToHost(ctx context.Context, r *runner, e Env) ([]metric, error) {
	ctx, cancel := iperfCtx(ctx, r.seconds)
	defer cancel()
	_, ms, err := iperfRun(ctx, r, e, e.Command(ctx, 0, iperf.ClientArgs(e.HostAddr(), hostSideIperf, r.seconds, 1, false)...), "w1")
	return ms, err
}

func runHostToNS(ctx context.Context, r *runner, e Env) ([]metric, error) {
	ctx, cancel := iperfCtx(ctx, r.seconds)
	defer cancel()
	_, ms, err := iperfRun(ctx, r, e, e.Command(ctx, 0, iperf.ClientArgs(e.HostAddr(), hostSideIperf, r.seconds, 1, true)...), "w2")
	return ms, err
}

func runPublished(ctx context.Context, r *runner, e Env) ([]metric, error) {
	addr, ok := e.Published("tcp", nsIperfPort)
	if !ok {
		return nil, errSkip
	}
	host, port := splitHostPort(addr)
	ctx, cancel := iperfCtx(ctx, r.seconds)
	defer cancel()
	argv := iperf.ClientArgs(host, port, r.seconds, 1, false)
	_, ms, err := iperfRun(ctx, r, e, exec.CommandContext(ctx, argv[0], argv[1:]...), "w3")
	return ms, err
}

func runNSToNS(ctx context.Context, r *runner, e Env) ([]metric, error) {
	peer, ok := e.Peer()
	if !ok {
		return nil, errSkip
	}
	ctx, cancel := iperfCtx(ctx, r.seconds)
	defer cancel()
	_, ms, err := iperfRun(ctx, r, e, e.Command(ctx, 1, iperf.ClientArgs(peer, nsIperfPort, r.seconds, 1, false)...), "w4")
	return ms, err
}

func runNSToHost4(ctx context.Context, r *runner, e Env) ([]metric, error) {
	ctx, cancel := iperfCtx(ctx, r.seconds)
	defer cancel()
	res, ms, err := iperfRun(ctx, r, e, e.Command(ctx, 0, iperf.ClientArgs(e.HostAddr(), hostSideIperf, r.seconds, 4, false)...), "w5")
	if err == nil && res.Retransmits >= 0 {
		ms = append(ms, metric{Name: "retransmits", Value: float64(res.Retransmits), LowerBetter: true})
	}
	return ms, err
}

// probeRun runs a probe client command and decodes its Result.
func probeRun(ctx context.Context, cmd *exec.Cmd) (probe.Result, error) {
	out, err := runOut(cmd)
	if err != nil {
		return probe.Result{}, err
	}
	var res probe.Result
	if err := json.Unmarshal(out, &res); err != nil {
		return probe.Result{}, fmt.Errorf("probe output %q: %w", clip(out), err)
	}
	return res, nil
}

// latencyMetrics returns the percentiles, or nothing when no round trip
// succeeded (a run that lost every datagram has no latency).
func latencyMetrics(res probe.Result) []metric {
	if res.N-res.Lost-res.Errors <= 0 {
		return nil
	}
	return []metric{
		{Name: "p50 us", Value: res.P50, LowerBetter: true},
		{Name: "p99 us", Value: res.P99, LowerBetter: true},
	}
}

func rrArgs(r *runner, kind, addr string) []string {
	return []string{r.probe, kind, "-addr", addr, "-n", fmt.Sprint(r.rrN), "-size", "64"}
}

func runTCPRRPublished(ctx context.Context, r *runner, e Env) ([]metric, error) {
	addr, ok := e.Published("tcp", nsTCPEcho)
	if !ok {
		return nil, errSkip
	}
	argv := rrArgs(r, "tcprr", addr)
	res, err := probeRun(ctx, exec.CommandContext(ctx, argv[0], argv[1:]...))
	if err != nil {
		return nil, err
	}
	return latencyMetrics(res), nil
}

func runTCPRRHost(ctx context.Context, r *runner, e Env) ([]metric, error) {
	res, err := probeRun(ctx, e.Command(ctx, 0, rrArgs(r, "tcprr", joinHostPort(e.HostAddr(), hostSideTCP))...))
	if err != nil {
		return nil, err
	}
	return latencyMetrics(res), nil
}

func udpMetrics(res probe.Result) []metric {
	return append(latencyMetrics(res),
		metric{Name: "loss %", Value: 100 * float64(res.Lost+res.Errors) / float64(max(res.N, 1)), LowerBetter: true})
}

func runUDPRRPublished(ctx context.Context, r *runner, e Env) ([]metric, error) {
	addr, ok := e.Published("udp", nsUDPEcho)
	if !ok {
		return nil, errSkip
	}
	argv := rrArgs(r, "udprr", addr)
	res, err := probeRun(ctx, exec.CommandContext(ctx, argv[0], argv[1:]...))
	if err != nil {
		return nil, err
	}
	return udpMetrics(res), nil
}

func runUDPRRHost(ctx context.Context, r *runner, e Env) ([]metric, error) {
	res, err := probeRun(ctx, e.Command(ctx, 0, rrArgs(r, "udprr", joinHostPort(e.HostAddr(), hostSideUDP))...))
	if err != nil {
		return nil, err
	}
	return udpMetrics(res), nil
}

func connArgs(r *runner, addr string) []string {
	return []string{r.probe, "connrate", "-addr", addr, "-n", fmt.Sprint(r.connN), "-parallel", fmt.Sprint(r.connPar)}
}

func connMetrics(res probe.Result) []metric {
	return []metric{
		{Name: "conn/s", Value: res.PerSecond},
		{Name: "errors", Value: float64(res.Errors), LowerBetter: true},
	}
}

func runConnPublished(ctx context.Context, r *runner, e Env) ([]metric, error) {
	addr, ok := e.Published("tcp", nsTCPEcho)
	if !ok {
		return nil, errSkip
	}
	argv := connArgs(r, addr)
	res, err := probeRun(ctx, exec.CommandContext(ctx, argv[0], argv[1:]...))
	if err != nil {
		return nil, err
	}
	return connMetrics(res), nil
}

func runConnHost(ctx context.Context, r *runner, e Env) ([]metric, error) {
	res, err := probeRun(ctx, e.Command(ctx, 0, connArgs(r, joinHostPort(e.HostAddr(), hostSideTCP))...))
	if err != nil {
		return nil, err
	}
	ms := connMetrics(res)
	// (9): what the emulator holds after thousands of short connections
	// (flow tables, TIME_WAIT state, pooled buffers).
	if pid := e.EmulatorPID(); pid != 0 {
		time.Sleep(time.Second)
		if rss, err := procstatRSS(pid); err == nil {
			ms = append(ms, metric{Name: "emulator RSS after MiB", Value: mib(rss), LowerBetter: true})
		}
	}
	return ms, nil
}
