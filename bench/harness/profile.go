package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profiler fetches pprof CPU and allocation profiles from the usernet
// daemon while a throughput workload runs (PROFILE=1). The daemon serves
// net/http/pprof on the loopback address in $USERNET_PPROF when that is
// set; the usernet system starts it with that variable. A nil profiler
// does nothing.
type profiler struct {
	dir  string
	addr string // 127.0.0.1:port the daemon serves pprof on
	mtu  int
	mu   sync.Mutex
	errs []string
}

// start begins a CPU profile of seconds-1 seconds (so it ends inside the
// run) for a usernet Env and returns a function that waits for it and
// then saves the allocation profile. Profiles go to
// DIR/SYSTEM-mtuM-TAG-{cpu,allocs}.pprof (SYSTEM: usernet or usernet-bypass).
func (p *profiler) start(ctx context.Context, e Env, tag string, seconds int) func() {
	if p == nil {
		return func() {}
	}
	ue, ok := e.(*usernetEnv)
	if !ok {
		return func() {}
	}
	base := filepath.Join(p.dir, fmt.Sprintf("%s-mtu%d-%s", ue.u.Name(), p.mtu, tag))
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.fetch(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(seconds-1, 1)), base+"-cpu.pprof", time.Duration(seconds+15)*time.Second)
	}()
	return func() {
		<-done
		p.fetch(ctx, "/debug/pprof/allocs", base+"-allocs.pprof", 15*time.Second)
	}
}

func (p *profiler) fetch(ctx context.Context, path, file string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+path, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("daemon has no pprof endpoint on %s (USERNET_PPROF): %w", p.addr, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		f, err := os.Create(file)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.errs = append(p.errs, fmt.Sprintf("profile %s: %v", filepath.Base(file), err))
	} else {
		fmt.Fprintf(os.Stderr, "bench: wrote %s\n", file)
	}
}
