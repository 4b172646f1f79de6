package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestMemoryLimitFor(t *testing.T) {
	for _, tc := range []struct{ held, floor, want int64 }{
		{0, 40 << 20, 40 << 20},
		{19 << 20, 40 << 20, 40 << 20},
		{55 << 20, 40 << 20, 110 << 20},
	} {
		if got := memoryLimitFor(tc.held, tc.floor); got != tc.want {
			t.Errorf("memoryLimitFor(%d, %d) = %d, want %d", tc.held, tc.floor, got, tc.want)
		}
	}
}

// TestFollowMemory: the soft limit rises above what is live, so the
// collector does not run back to back, and falls to the floor again once
// the memory is freed.
func TestFollowMemory(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	const floor = 16 << 20
	go func() {
		defer close(done)
		followMemory(ctx, floor, 5*time.Millisecond)
	}()
	defer func() { cancel(); <-done }()

	waitLimit := func(what string, ok func(int64) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			runtime.GC() // the live-heap figure is the last collection's
			limit := debug.SetMemoryLimit(-1)
			if ok(limit) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("soft memory limit %d MiB: %s", limit>>20, what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	held := make([]byte, 64<<20)
	waitLimit("want at least 128 MiB while 64 MiB is live", func(l int64) bool { return l >= 128<<20 })
	runtime.KeepAlive(held) // and dead from here
	waitLimit("want it back near the floor once freed", func(l int64) bool { return l < 64<<20 })
}
