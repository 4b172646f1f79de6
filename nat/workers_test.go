package nat

import (
	"sync"
	"testing"
	"time"
)

// TestWorkerPoolRunsJobsConcurrently checks that goFn never queues a job
// behind a busy worker: each job here blocks until every job has started,
// as a relay's two copy loops depend on each other, so the test only
// finishes if all of them run at once. Jobs are handed out in waves so
// that later waves go to workers idle from the earlier ones.
func TestWorkerPoolRunsJobsConcurrently(t *testing.T) {
	checkGoroutines(t) // workers must exit once idle
	p := workerPool{work: make(chan func())}
	for wave := range 3 {
		const jobs = 8
		var started, done sync.WaitGroup
		started.Add(jobs)
		done.Add(jobs)
		all := make(chan struct{})
		for range jobs {
			p.goFn(func() {
				defer done.Done()
				started.Done()
				<-all
			})
		}
		waitOrFail(t, &started, "wave %d: not every job started", wave)
		close(all)
		waitOrFail(t, &done, "wave %d: not every job finished", wave)
	}
}

func waitOrFail(t *testing.T, wg *sync.WaitGroup, format string, args ...any) {
	t.Helper()
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf(format, args...)
	}
}
