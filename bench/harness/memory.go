package main

import (
	"net"
	"strconv"
	"time"

	"github.com/usernet/usernet/bench/internal/procstat"
)

// Thin names for what workloads read about the emulator process (9, 10).

func procstatCPU(pid int) (time.Duration, error) { return procstat.CPU(pid) }
func procstatRSS(pid int) (uint64, error)        { return procstat.RSS(pid) }

func startPeak(pid int) *procstat.PeakRSS { return procstat.StartPeakRSS(pid, 100*time.Millisecond) }

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func splitHostPort(addr string) (string, int) {
	h, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return h, n
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
