package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/usernet/usernet/bench/internal/report"
)

// writeReport prints the markdown report: one table with every figure
// (median and range per system, usernet's ratio to each other system),
// memory per sandbox, unavailable systems, failures and machine load.
func writeReport(w io.Writer, o options, res *results) {
	fmt.Fprintf(w, "\n## usernet side-by-side benchmark (%s)\n\n", res.Started.Format("2006-01-02 15:04 UTC"))
	mode := ""
	if o.quick {
		mode = " (quick mode: figures are a smoke check, not a measurement)"
	}
	fmt.Fprintf(w, "%d repetition(s), iperf3 -t %d, %d round trips, %d connections x %d in parallel; median (min-max)%s.\n",
		o.reps, o.seconds, o.rrN, o.connN, 16, mode)
	fmt.Fprintf(w, "Ratios are a usernet variant's median over the other system's: above 1 is better for usernet for rates (Gbit/s, conn/s), worse for latencies, losses, errors and costs. usernet-bypass runs its sandboxes with --bypass, which changes the paths to the host (1, 2, 5, 6b, 7b, 8b) and not the published ones.\n")
	fmt.Fprintf(w, "kernel: veth to the host, bridge between namespaces; its \"published\" port is the namespace's own address (no proxy).\n\n")

	systems := res.Systems
	header := []string{"workload", "metric", "MTU"}
	header = append(header, systems...)
	// Each usernet variant gets a ratio column per other system.
	var ours, peers []string
	for _, s := range systems {
		if isUsernet(s) {
			ours = append(ours, s)
		} else {
			peers = append(peers, s)
		}
	}
	for _, o := range ours {
		for _, p := range peers {
			header = append(header, o+"/"+p)
		}
	}
	t := report.Table{Header: header}

	type rowKey struct {
		workload, metric string
		mtu              int
	}
	var rows []rowKey
	seen := map[rowKey]bool{}
	values := map[rowKey]map[string][]float64{}
	errs := map[rowKey]map[string]int{}
	for _, r := range res.Records {
		if r.Workload == "setup" {
			continue
		}
		k := rowKey{r.Workload, r.Metric, r.MTU}
		if r.Error != "" {
			k.metric = "error"
		}
		if !seen[k] {
			seen[k] = true
			rows = append(rows, k)
			values[k] = map[string][]float64{}
			errs[k] = map[string]int{}
		}
		if r.Error != "" {
			errs[k][r.System]++
			continue
		}
		values[k][r.System] = append(values[k][r.System], r.Value)
	}
	order := map[string]int{}
	names := map[string]string{"9": "Emulator memory", "10": "Emulator CPU"}
	for i, wl := range workloads() {
		order[wl.ID] = i
		names[wl.ID] = wl.Name
	}
	order["9"] = len(order)
	// Group metrics of one workload together, MTUs within each metric.
	slices.SortStableFunc(rows, func(a, b rowKey) int {
		if c := order[a.workload] - order[b.workload]; c != 0 {
			return c
		}
		if c := strings.Compare(metricOrder(a.metric), metricOrder(b.metric)); c != 0 {
			return c
		}
		if c := strings.Compare(a.metric, b.metric); c != 0 {
			return c
		}
		return a.mtu - b.mtu
	})
	for _, k := range rows {
		sums := map[string]report.Summary{}
		cells := []string{"(" + k.workload + ") " + names[k.workload], k.metric, strconv.Itoa(k.mtu)}
		for _, s := range systems {
			sums[s] = report.Summarize(values[k][s])
			c := sums[s].Format(prec(k.metric))
			if n := errs[k][s]; n > 0 {
				c = fmt.Sprintf("%d failed", n)
			}
			cells = append(cells, c)
		}
		for _, o := range ours {
			for _, p := range peers {
				cells = append(cells, report.Ratio(sums[o], sums[p]))
			}
		}
		t.Add(cells...)
	}
	t.Write(w)

	if len(res.PerSandbox) > 0 {
		fmt.Fprintf(w, "\nEmulator memory per sandbox with %d idle sandboxes (MTU 1500): ", res.Sandboxes)
		var parts []string
		for _, s := range systems {
			if v, ok := res.PerSandbox[s]; ok {
				parts = append(parts, fmt.Sprintf("%s %.2f MiB", s, v/(1<<20)))
			}
		}
		fmt.Fprintf(w, "%s. (usernet: daemon RSS growth / n; slirp4netns, pasta: RSS of their one process per sandbox.)\n", strings.Join(parts, ", "))
	}
	if len(res.Unavailable) > 0 {
		fmt.Fprintln(w)
		for _, s := range slices.Sorted(maps.Keys(res.Unavailable)) {
			fmt.Fprintf(w, "- %s: not available: %s\n", s, res.Unavailable[s])
		}
	}
	var failures []string
	for _, r := range res.Records {
		if r.Error != "" {
			failures = append(failures, fmt.Sprintf("- rep %d %s MTU %d (%s): %s", r.Rep, r.System, r.MTU, r.Workload, firstLine(r.Error)))
		}
	}
	if len(failures) > 0 {
		fmt.Fprintf(w, "\nFailures:\n%s\n", strings.Join(failures, "\n"))
	}
	for _, n := range res.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	fmt.Fprintf(w, "\nMachine before each run: ")
	var ls []string
	for _, l := range res.Loads {
		idle := ""
		if !l.Idle {
			idle = " NOT IDLE"
		}
		ls = append(ls, fmt.Sprintf("r%d %s/%d %.0f%% busy load1 %.2f%s", l.Rep, l.System, l.MTU, 100*l.Busy, l.Load1, idle))
	}
	fmt.Fprintf(w, "%s.\n", strings.Join(ls, "; "))
}

// metricOrder sorts a workload's metrics: its main figure first, the
// emulator's costs after.
func metricOrder(m string) string {
	for i, p := range []string{"Gbit/s", "conn/s", "p50", "p99", "loss", "errors", "retransmits", "emulator CPU", "emulator peak", "emulator RSS idle", "emulator RSS after", "error"} {
		if strings.HasPrefix(m, p) {
			return fmt.Sprintf("%02d", i)
		}
	}
	return "99" + m
}

func prec(metric string) int {
	switch {
	case strings.HasPrefix(metric, "Gbit/s"), strings.HasPrefix(metric, "loss"), strings.Contains(metric, "CPU"):
		return 2
	case strings.Contains(metric, "MiB"):
		return 1
	}
	return 0
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// isUsernet reports whether system s is one of usernet's variants.
func isUsernet(s string) bool { return s == "usernet" || strings.HasPrefix(s, "usernet-") }
