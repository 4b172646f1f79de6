// Package procstat reads what the benchmarks report about a process and
// the machine from /proc: resident memory, CPU time, load and idle time.
package procstat

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// RSS returns the resident set size of pid in bytes (VmRSS).
func RSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("rss: %w", err)
	}
	return parseRSS(b)
}

func parseRSS(status []byte) (uint64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("rss: odd VmRSS line %q", line)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("rss: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("rss: no VmRSS line (kernel thread or zombie?)")
}

// CPU returns the user+system CPU time pid has used so far.
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu: %w", err)
	}
	return parseCPU(b)
}

func parseCPU(stat []byte) (time.Duration, error) {
	// The command name (field 2) may contain spaces and parentheses;
	// fields after its closing parenthesis are fixed.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu: malformed stat %q", stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu: short stat %q", stat)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cpu: malformed utime/stime in %q", stat)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// PeakRSS samples the RSS of pid every interval until stop is called and
// returns the largest sample. It measures the peak over one workload,
// which VmHWM (the peak since the process started) cannot.
type PeakRSS struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	peak   uint64
}

// StartPeakRSS begins sampling pid.
func StartPeakRSS(pid int, interval time.Duration) *PeakRSS {
	ctx, cancel := context.WithCancel(context.Background())
	p := &PeakRSS{cancel: cancel}
	p.wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if rss, err := RSS(pid); err == nil {
				p.mu.Lock()
				p.peak = max(p.peak, rss)
				p.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return p
}

// Stop ends sampling and returns the peak in bytes (0 if no sample
// succeeded).
func (p *PeakRSS) Stop() uint64 {
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}

// Load is how busy the machine is.
type Load struct {
	Load1 float64 // 1-minute load average
	Busy  float64 // fraction of CPU time not idle over the sample window
}

// String formats the load for the report.
func (l Load) String() string {
	return fmt.Sprintf("load1 %.2f, %.0f%% busy", l.Load1, 100*l.Busy)
}

// Sample measures the machine over window: the fraction of CPU time
// spent neither idle nor in iowait, and the 1-minute load average.
func Sample(window time.Duration) (Load, error) {
	idle0, total0, err := cpuTimes()
	if err != nil {
		return Load{}, err
	}
	time.Sleep(window)
	idle1, total1, err := cpuTimes()
	if err != nil {
		return Load{}, err
	}
	var l Load
	if dt := total1 - total0; dt > 0 {
		l.Busy = 1 - float64(idle1-idle0)/float64(dt)
	}
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return Load{}, fmt.Errorf("load: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) > 0 {
		l.Load1, _ = strconv.ParseFloat(f[0], 64)
	}
	return l, nil
}

func cpuTimes() (idle, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("load: %w", err)
	}
	return parseCPUTimes(b)
}

func parseCPUTimes(stat []byte) (idle, total uint64, err error) {
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("load: malformed /proc/stat line %q", line)
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("load: malformed /proc/stat line %q", line)
		}
		// guest and guest_nice (fields 9, 10) are already in user/nice.
		if i >= 8 {
			break
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return idle, total, nil
}

// WaitIdle samples the machine once a second until it is at most
// maxBusy busy, or until timeout; it returns the last sample, and whether
// the machine became idle. Benchmarks start each repetition this way so
// one run's leftovers (a TIME_WAIT storm, a dying process) do not land in
// the next one's figures.
func WaitIdle(ctx context.Context, maxBusy float64, timeout time.Duration) (Load, bool) {
	deadline := time.Now().Add(timeout)
	var l Load
	for {
		var err error
		l, err = Sample(time.Second)
		if err == nil && l.Busy <= maxBusy {
			return l, true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return l, false
		}
	}
}
