package nat

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// inFlight bounds the connection attempts that are between the guest's SYN
// and the end of the host dial, in total and per guest source address.
// Without it a guest scanning unreachable addresses would hold a goroutine,
// a socket and a netstack half-open endpoint per SYN for the whole dial
// timeout. Safe for concurrent use.
type inFlight struct {
	max, maxPerSource int

	mu        sync.Mutex
	total     int
	perSource map[netip.Addr]int
}

func newInFlight(max, maxPerSource int) *inFlight {
	return &inFlight{max: max, maxPerSource: maxPerSource, perSource: make(map[netip.Addr]int)}
}

// acquire reserves a slot for src and reports whether one was free. Every
// successful acquire must be followed by exactly one release(src).
func (f *inFlight) acquire(src netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.total >= f.max || f.perSource[src] >= f.maxPerSource {
		return false
	}
	f.total++
	f.perSource[src]++
	return true
}

// release returns a slot taken by acquire(src).
func (f *inFlight) release(src netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.total--
	if n := f.perSource[src] - 1; n > 0 {
		f.perSource[src] = n
	} else {
		delete(f.perSource, src)
	}
}

// logLimiter lets at most burst data-path log records through per interval
// and counts the ones it holds back, so a guest that floods failing
// connections cannot flood the daemon's log. The count of suppressed
// records is reported on the next record let through. Safe for concurrent
// use.
type logLimiter struct {
	logger   *slog.Logger
	clock    func() time.Time
	interval time.Duration
	burst    int

	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

func newLogLimiter(logger *slog.Logger, clock func() time.Time) *logLimiter {
	return &logLimiter{logger: logger, clock: clock, interval: 10 * time.Second, burst: 10}
}

// warn logs msg at Warn level unless this interval's budget is spent.
func (l *logLimiter) warn(msg string, args ...any) {
	if !l.allow(&args) {
		return
	}
	l.logger.Warn(msg, args...)
}

// allow reports whether a record may be logged now and, if records were
// suppressed since the last one, appends their count to args.
func (l *logLimiter) allow(args *[]any) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	if now.Sub(l.start) >= l.interval || now.Before(l.start) {
		l.start, l.n = now, 0
	}
	if l.n >= l.burst {
		l.suppressed++
		return false
	}
	l.n++
	if l.suppressed > 0 {
		*args = append(*args, "suppressed", l.suppressed)
		l.suppressed = 0
	}
	return true
}
