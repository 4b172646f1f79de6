// Package vswitch is a userspace learning Ethernet switch: one per
// network, with ports for TAP devices, the gateway's netstack NIC, VM
// sockets and tunnels.
//
// Frames move through the switch in batches and keep their virtio-net
// header, so a TSO super-frame crosses from one offload-capable port to
// another whole and is segmented in software only for a port that cannot
// take it. Each port has its own bounded transmit queue and writer
// goroutine; a full queue drops and counts, as a hardware switch does.
// No lock is shared by all ports on the forwarding path: the forwarding
// database is read under an RWMutex and refreshed with atomics, and the
// port list is a copy-on-write snapshot. forward.go describes the packet
// path step by step.
//
// Locks: Switch.mu (attach, detach), the forwarding database's RWMutex
// and each transmit queue's mutex. No code holds one of them while taking
// another, and none is held across a call into a Port.
//
// The directory is switch/ but switch is a Go keyword, so importers write
//
//	vswitch "github.com/usernet/usernet/switch"
package vswitch

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Switch. The zero value is a switch with inter-
// container communication on, 300 s aging and the real clock.
type Config struct {
	// AgingTime is how long a learned MAC is remembered without traffic
	// from it; 0 means DefaultAgingTime.
	AgingTime time.Duration

	// Clock returns the current time for aging; nil means time.Now. Tests
	// pass a fake clock.
	Clock func() time.Time

	// DisableICC turns inter-container communication off from the start
	// (Docker's enable_icc=false): endpoints reach only Gateway ports. See
	// SetICC.
	DisableICC bool

	// Logger receives attach/detach events and rate-limited data-path
	// errors; nil discards them.
	Logger *slog.Logger
}

// ErrClosed is returned by Attach on a closed switch.
var ErrClosed = errors.New("vswitch: switch closed")

// Switch is a learning Ethernet switch. Its methods are safe for
// concurrent use. Create it with New and release it with Close.
type Switch struct {
	clock  func() time.Time
	logger *slog.Logger
	fdb    *fdb
	icc    atomic.Bool

	// ports is the copy-on-write list of attached ports that flooding
	// walks without a lock; it is replaced under mu.
	ports atomic.Pointer[[]*Attachment]

	// mu serializes Attach, Detach and Close (never the forwarding path).
	mu     sync.Mutex
	closed bool
	nextID int
}

// New returns a switch with no ports.
func New(cfg Config) *Switch {
	if cfg.AgingTime <= 0 {
		cfg.AgingTime = DefaultAgingTime
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Switch{
		clock:  cfg.Clock,
		logger: cfg.Logger,
		fdb:    newFDB(cfg.AgingTime),
	}
	s.icc.Store(!cfg.DisableICC)
	s.ports.Store(new([]*Attachment))
	return s
}

// SetICC turns inter-container communication on or off. With it off, a
// port that is not a Gateway port can send only to Gateway ports (its
// broadcasts and multicasts reach only them too), while frames from a
// Gateway port still reach everyone. It takes effect for the next frame.
func (s *Switch) SetICC(enabled bool) { s.icc.Store(enabled) }

// ICC reports whether inter-container communication is on.
func (s *Switch) ICC() bool { return s.icc.Load() }

// Ports returns the attached ports in attach order. The slice is the
// caller's; the attachments stay valid to read after they detach.
func (s *Switch) Ports() []*Attachment { return slices.Clone(*s.ports.Load()) }

// Lookup returns the port the switch would forward a unicast frame for
// mac to, and false when mac is unknown or aged out (the frame would
// flood).
func (s *Switch) Lookup(mac MAC) (*Attachment, bool) {
	a := s.fdb.lookup(mac, s.now())
	if a == nil || a.detached.Load() {
		return nil, false
	}
	return a, true
}

// Attach adds p as a port and starts its writer goroutine and, if p is a
// Reader, its reader goroutine. From then on the switch owns p: it calls
// Close on it in Detach (or Close of the switch). An empty cfg.Name is
// replaced by "port<N>".
func (s *Switch) Attach(p Port, cfg PortConfig) (*Attachment, error) {
	if p == nil {
		return nil, errors.New("vswitch: attach: nil port")
	}
	if cfg.QueueLen < 0 {
		return nil, fmt.Errorf("vswitch: attach %s: negative QueueLen %d", cfg.Name, cfg.QueueLen)
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = defaultQueueLen
	}
	if cfg.Bind != nil {
		if cfg.Bind.MAC.IsMulticast() {
			return nil, fmt.Errorf("vswitch: attach %s: bound MAC %s is a multicast address", cfg.Name, cfg.Bind.MAC)
		}
		if cfg.Bind.IPv4.IsValid() && !cfg.Bind.IPv4.Is4() {
			return nil, fmt.Errorf("vswitch: attach %s: bound address %s is not IPv4", cfg.Name, cfg.Bind.IPv4)
		}
		b := *cfg.Bind // the caller may reuse its Binding
		cfg.Bind = &b
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("vswitch: attach %s: %w", cfg.Name, ErrClosed)
	}
	s.nextID++
	if cfg.Name == "" {
		cfg.Name = fmt.Sprintf("port%d", s.nextID)
	}
	a := &Attachment{
		sw:     s,
		port:   p,
		cfg:    cfg,
		logger: s.logger.With("port", cfg.Name),
	}
	_, a.scatter = p.(ScatterPort)
	a.q.init(cfg.QueueLen)

	ports := append(slices.Clone(*s.ports.Load()), a)
	s.ports.Store(&ports)

	if !cfg.Direct {
		a.writerDone.Add(1)
		go a.writeLoop()
	}
	if r, ok := p.(Reader); ok {
		a.readerDone.Add(1)
		go a.readLoop(r)
	}
	a.logger.Debug("port attached", "offloads", cfg.Offloads, "gateway", cfg.Gateway, "queue", cfg.QueueLen)
	return a, nil
}

// Close detaches every port and refuses further Attach calls.
func (s *Switch) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	for _, a := range s.Ports() {
		a.Detach()
	}
}

// now returns the switch clock in nanoseconds, the unit of FDB timestamps.
func (s *Switch) now() int64 { return s.clock().UnixNano() }

// Attachment is one attached port: its configuration, transmit queue,
// goroutines and counters. Its methods are safe for concurrent use.
type Attachment struct {
	sw     *Switch
	port   Port
	cfg    PortConfig
	logger *slog.Logger

	// scatter: the port implements ScatterPort and is written scatter
	// frames as they are.
	scatter bool

	q txQueue

	// direct guards a Direct port's synchronous writes: writeDirect holds
	// it for reading, detach takes it once for writing so that no write is
	// still running when the port is closed.
	direct sync.RWMutex

	// detached is set first thing in Detach: Input then drops frames from
	// this port and forwarding stops choosing it as a destination.
	detached   atomic.Bool
	detachOnce sync.Once
	writerDone sync.WaitGroup
	readerDone sync.WaitGroup

	stats    portCounters
	lastWarn atomic.Int64 // wall-clock nanoseconds of the last data-path warning
}

// portCounters are the atomics behind PortStats.
type portCounters struct {
	rxFrames, rxBytes atomic.Uint64
	txFrames, txBytes atomic.Uint64

	dropQueueFull atomic.Uint64
	dropSpoof     atomic.Uint64
	dropICC       atomic.Uint64
	dropMalformed atomic.Uint64
	dropTxError   atomic.Uint64
}

// Name returns the port's name from its PortConfig.
func (a *Attachment) Name() string { return a.cfg.Name }

// Config returns the port's configuration as attached (defaults filled in).
func (a *Attachment) Config() PortConfig { return a.cfg }

// Port returns the attached port.
func (a *Attachment) Port() Port { return a.port }

// Stats returns a snapshot of the port's counters. Each counter is read
// atomically, the set is not: a frame in flight may show in one and not
// yet in another.
func (a *Attachment) Stats() PortStats {
	c := &a.stats
	return PortStats{
		RxFrames:      c.rxFrames.Load(),
		RxBytes:       c.rxBytes.Load(),
		TxFrames:      c.txFrames.Load(),
		TxBytes:       c.txBytes.Load(),
		DropQueueFull: c.dropQueueFull.Load(),
		DropSpoof:     c.dropSpoof.Load(),
		DropICC:       c.dropICC.Load(),
		DropMalformed: c.dropMalformed.Load(),
		DropTxError:   c.dropTxError.Load(),
	}
}

// Detach removes the port: frames stop flowing to and from it, its
// writer goroutine stops, the Port is closed (which ends its reader
// goroutine), frames still queued for it are released and its MACs are
// forgotten. It waits for both goroutines, so it must not be called from
// the port's own WriteFrames or ReadFrames. Calling it again does nothing.
func (a *Attachment) Detach() {
	a.detachOnce.Do(a.detach)
}

func (a *Attachment) detach() {
	s := a.sw
	a.detached.Store(true)
	s.mu.Lock()
	ports := slices.DeleteFunc(slices.Clone(*s.ports.Load()), func(p *Attachment) bool { return p == a })
	s.ports.Store(&ports)
	s.mu.Unlock()

	// Closing the queue wakes the writer and any Input blocked on it; the
	// Port contract says Close comes after the writer has stopped.
	a.q.close()
	a.writerDone.Wait()
	a.direct.Lock()
	//lint:ignore SA2001 an empty critical section waits out writeDirect
	a.direct.Unlock()
	if err := a.port.Close(); err != nil {
		a.logger.Warn("closing port", "err", err)
	}
	a.readerDone.Wait()
	// Forget last: until the reader stopped it could have re-learned.
	s.fdb.forget(a, s.now())
	a.logger.Debug("port detached")
}

// warnInterval limits data-path warnings to one per port per interval, so
// a misbehaving guest cannot flood the log.
const warnInterval = 10 * time.Second

// warn logs a data-path problem unless this port logged one recently;
// the drop counters carry the totals.
func (a *Attachment) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := a.lastWarn.Load()
	if now-last < int64(warnInterval) || !a.lastWarn.CompareAndSwap(last, now) {
		return
	}
	a.logger.Warn(msg, args...)
}
