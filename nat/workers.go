package nat

import "time"

// Per-connection goroutines (a published port's forwardTCP, the second
// copy loop of every relay) run on reused goroutines rather than fresh
// ones. A fresh goroutine starts with a small stack and the first pass
// through gVisor's send path (gonet Write down to the TAP writev, some
// forty frames deep) grows it several times; each growth copies the stack.
// At a few thousand connections a second that copying was about a tenth
// of the daemon's CPU. A reused goroutine keeps its grown stack.
//
// The pool has no fixed size: go hands fn to a goroutine that is idle
// waiting for work, or starts a new one when none is; a goroutine that has
// had nothing to do for workerIdle exits, so an idle daemon keeps none.

// workerIdle is how long a finished worker waits for more work before it
// exits. Short, so that bursts reuse workers and an idle daemon (and a
// test counting goroutines after Close) soon sees them gone.
const workerIdle = time.Second

// workers is the process-wide pool: a job is any func, so every network
// and mapping shares it.
var workers = workerPool{work: make(chan func())}

// workerPool runs functions on reused goroutines. The zero value is not
// usable: work must be an unbuffered channel, so that a send succeeds
// only when a worker is waiting to take the job at once.
type workerPool struct {
	work chan func()
}

// goFn runs fn on an idle worker, or on a new goroutine when none is
// idle. Like the go statement it does not wait for fn.
func (p *workerPool) goFn(fn func()) {
	select {
	case p.work <- fn:
	default:
		go p.loop(fn)
	}
}

// loop runs fn, then further jobs until it has been idle for workerIdle.
// It drops each job once run, so an idle worker pins nothing the job
// referenced (connections, mappings).
func (p *workerPool) loop(fn func()) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		fn()
		fn = nil
		t.Reset(workerIdle)
		select {
		case fn = <-p.work:
		case <-t.C:
			return
		}
	}
}
