package nat

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// checkGoroutines fails the test if, once its cleanups have run, more
// goroutines are alive than when it started. Call it first in a test so
// its cleanup runs last. Goroutines may take a moment to finish after the
// Close that ends them, so it waits (bounded) for the count to drop.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("%d goroutines leaked:\n%s", n-before, strings.TrimSpace(string(buf)))
		}
	})
}
