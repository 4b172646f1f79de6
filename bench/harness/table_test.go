package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestWriteReport(t *testing.T) {
	res := &results{
		Started:     time.Date(2026, 11, 22, 16, 0, 0, 0, time.UTC),
		Systems:     []string{"usernet", "slirp4netns", "kernel"},
		Unavailable: map[string]string{"pasta": "pasta not installed (apt-get install -y passt)"},
		PerSandbox:  map[string]float64{"usernet": 1 << 20, "slirp4netns": 3 << 20},
		Sandboxes:   50,
		Records: []record{
			{Rep: 0, System: "usernet", MTU: 1500, Workload: "1", Metric: "Gbit/s", Value: 8},
			{Rep: 1, System: "usernet", MTU: 1500, Workload: "1", Metric: "Gbit/s", Value: 10},
			{Rep: 2, System: "usernet", MTU: 1500, Workload: "1", Metric: "Gbit/s", Value: 9},
			{Rep: 0, System: "slirp4netns", MTU: 1500, Workload: "1", Metric: "Gbit/s", Value: 1},
			{Rep: 0, System: "kernel", MTU: 1500, Workload: "1", Metric: "Gbit/s", Value: 18},
			{Rep: 0, System: "usernet", MTU: 65520, Workload: "1", Metric: "Gbit/s", Value: 12},
			{Rep: 0, System: "usernet", MTU: 1500, Workload: "6a", Metric: "p99 us", Value: 100, LowerBetter: true},
			{Rep: 0, System: "usernet", MTU: 1500, Workload: "6a", Metric: "p50 us", Value: 40, LowerBetter: true},
			{Rep: 0, System: "slirp4netns", MTU: 1500, Workload: "6a", Metric: "error", Error: "connection refused"},
		},
		Loads: []loadNote{{Rep: 0, System: "usernet", MTU: 1500, Load1: 0.5, Busy: 0.02, Idle: true}},
	}
	var b strings.Builder
	writeReport(&b, options{reps: 3, seconds: 10, rrN: 20000, connN: 5000}, res)
	got := b.String()

	// Compare the rows cell by cell rather than the padding.
	rows := map[string][]string{}
	var order []string
	for line := range strings.Lines(got) {
		if !strings.HasPrefix(line, "| (") {
			continue
		}
		var cells []string
		for c := range strings.SplitSeq(strings.Trim(strings.TrimSpace(line), "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		key := cells[0] + "/" + cells[1] + "/" + cells[2]
		rows[key] = cells[3:]
		order = append(order, key)
	}
	want := map[string][]string{
		"(1) TCP namespace->host, 1 stream/Gbit/s/1500":   {"9.00 (8.00-10.00)", "1.00", "18.00", "9.00x", "0.50x"},
		"(1) TCP namespace->host, 1 stream/Gbit/s/65520":  {"12.00", "-", "-", "-", "-"},
		"(6a) TCP RR 64 B via published port/p50 us/1500": {"40", "-", "-", "-", "-"},
		"(6a) TCP RR 64 B via published port/p99 us/1500": {"100", "-", "-", "-", "-"},
		"(6a) TCP RR 64 B via published port/error/1500":  {"-", "1 failed", "-", "-", "-"},
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("report rows mismatch (-want +got):\n%s\nreport:\n%s", diff, got)
	}
	for _, s := range []string{
		"- pasta: not available: pasta not installed",
		"usernet 1.00 MiB, slirp4netns 3.00 MiB",
		"rep 0 slirp4netns MTU 1500 (6a): connection refused",
		"r0 usernet/1500 2% busy load1 0.50.",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("report lacks %q:\n%s", s, got)
		}
	}
	// Workloads in list order, the main figure before the others, MTUs
	// ascending, errors last.
	wantOrder := []string{
		"(1) TCP namespace->host, 1 stream/Gbit/s/1500",
		"(1) TCP namespace->host, 1 stream/Gbit/s/65520",
		"(6a) TCP RR 64 B via published port/p50 us/1500",
		"(6a) TCP RR 64 B via published port/p99 us/1500",
		"(6a) TCP RR 64 B via published port/error/1500",
	}
	if diff := cmp.Diff(wantOrder, order); diff != "" {
		t.Errorf("row order mismatch (-want +got):\n%s", diff)
	}
}
