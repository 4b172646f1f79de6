package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The daemon's soft memory limit. Without one the Go heap grows to twice
// the live data between collections, so a burst of connections leaves RSS
// high for minutes; a limit makes the collector run and return memory
// sooner. But a fixed limit under what the daemon really holds makes the
// collector run back to back: with 4,096 UDP flows open (about 55 MiB of
// live heap and goroutine stacks) and the limit at 40 MiB, garbage
// collection took three quarters of the daemon's CPU and a 100 µs round
// trip's p99 went to 1.6 ms. So the limit follows the live memory: twice
// it, never under daemonMemoryLimit, checked every memoryLimitInterval.

// daemonMemoryLimit is the soft memory limit's floor when GOMEMLIMIT is
// unset: well above an idle or moderately busy daemon's live memory.
const daemonMemoryLimit = 40 << 20

// memoryLimitInterval is how often followMemory looks.
const memoryLimitInterval = time.Second

// memoryLimitFor is the soft limit for a daemon holding held bytes of live
// heap and goroutine stacks.
func memoryLimitFor(held, floor int64) int64 {
	return max(floor, 2*held)
}

// followMemory sets the soft memory limit to memoryLimitFor the daemon's
// live memory now and after every interval, until ctx ends.
func followMemory(ctx context.Context, floor int64, interval time.Duration) {
	samples := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},               // heap objects alive after the last collection
		{Name: "/memory/classes/heap/stacks:bytes"}, // goroutine stacks
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	cur := int64(-1)
	for {
		metrics.Read(samples)
		var held int64
		for _, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				held += int64(s.Value.Uint64())
			}
		}
		if want := memoryLimitFor(held, floor); want != cur {
			debug.SetMemoryLimit(want)
			cur = want
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
