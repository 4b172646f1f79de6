package nat

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Outbound UDP path. The gateway calls HandleUDP for the first datagram of
// a new 4-tuple:
//
//  1. hostTarget checks and maps the destination, as for TCP.
//  2. The flow is added to the flow table (flowtable.go) under o.mu; a full
//     table drops its quietest flow that is not a conversation to make
//     room, or, when all are, drops the datagram and counts it.
//  3. A connected host socket is dialed (so the kernel filters replies from
//     other peers and picks one source port per flow) and the guest side is
//     accepted; the first datagram arrives through the accepted conn.
//  4. Datagrams are copied each way and the table told about every one
//     (sent = guest to host, received = the reply). From the guest they
//     are sent on the gateway's receive path as they arrive (sendToHost:
//     no goroutine, no waiting; a datagram the host socket has no room
//     for is dropped, as a full socket buffer would). Replies are read by
//     the network's one replyPoller goroutine (replies_linux.go), which
//     watches every flow's host socket, and sent to the guest without
//     waiting either. So a flow has no goroutine of its own. (Conns that
//     cannot do this, a test's, get a goroutine per direction instead.)
//  5. The janitor expires flows on Config.Clock (30 s for a query,
//     answered or not, 180 s for a conversation, 10 s for port 53;
//     flowtable.go) and closes their sockets, which ends any goroutines.

// udpMaxDatagram fits any UDP payload (65535 - 8 - 20).
const udpMaxDatagram = 65507

// udpBufs lends the UDP copy loops buffers for the largest datagram. A
// loop takes one only once a datagram is there (readPooled),
// so a quiet flow holds none: with a buffer per loop, a few hundred flows
// held more heap than the daemon's memory limit, and the collector ran
// without pause. It holds *[]byte, so that Put does not allocate.
var udpBufs = sync.Pool{New: func() any { b := make([]byte, udpMaxDatagram); return &b }}

// datagramNotifier is implemented by the gateway's UDP sockets
// (stack.UDPConn): OnDatagram hands fn each datagram on the gateway's
// receive path, in order, without a goroutine of the caller's.
type datagramNotifier interface {
	OnDatagram(fn func(p []byte))
}

// readDatagram reads c's next datagram into a buffer from udpBufs, taken
// once the datagram is there for a host socket (hostIO.readPooled); other
// conns (tests') hold it while they wait. On success the caller gives the
// buffer back.
func readDatagram(c io.Reader) (*[]byte, int, error) {
	if h, ok := c.(*hostIO); ok {
		return h.readPooled(&udpBufs, true)
	}
	buf := udpBufs.Get().(*[]byte)
	n, err := c.Read(*buf)
	if err != nil {
		udpBufs.Put(buf)
		return nil, 0, err
	}
	return buf, n, nil
}

// janitorInterval is how often expiry is checked. Expiry happens on the
// injected clock; this only bounds how late a flow is closed.
const janitorInterval = time.Second

// udpFlow is one outbound UDP flow's sockets. guest and host are set once,
// under Outbound.mu, after the flow is in the table.
type udpFlow struct {
	key   flowKey
	guest net.Conn
	host  net.Conn
	// hostRW is host, read and written with raw syscalls (hostIO) when
	// it is a kernel socket.
	hostRW io.ReadWriter
	// poller watches host for replies, when it does; pollID is the
	// flow's entry in it (replyPoller's, under its lock).
	poller *replyPoller
	pollID uint64
}

// close closes whichever sockets the flow has.
func (f *udpFlow) close() {
	if f.poller != nil {
		f.poller.remove(f, f.hostRW.(*hostIO))
	}
	if f.guest != nil {
		f.guest.Close()
	}
	if f.host != nil {
		f.host.Close()
	}
}

// udpRequest is the part of *stack.UDPRequest the UDP path uses.
type udpRequest interface {
	Accept() (net.Conn, error)
}

// handleUDP is the outbound UDP path described at the top of this file.
func (o *Outbound) handleUDP(src, dst netip.AddrPort, r udpRequest) {
	target, ok := o.hostTarget(dst)
	if !ok {
		o.udpDropped.Add(1)
		return
	}
	f := &udpFlow{key: flowKey{Src: src, Dst: dst}}
	var dropped *udpFlow
	o.mu.Lock()
	err := errClosed
	if !o.closed {
		dropped, err = o.udp.add(f.key, f, o.cfg.Clock())
	}
	o.mu.Unlock()
	if dropped != nil {
		// Room made for f (flowtable.go); its copy loops end with it.
		dropped.close()
	}
	switch {
	case errors.Is(err, errTableFull):
		o.udpDropped.Add(1)
		o.limited.warn("nat: udp flow table full, dropping", "src", src, "dst", dst, "max", o.cfg.MaxUDPFlows)
		return
	case err != nil:
		// Closed, or a duplicate request for a flow already set up.
		o.udpDropped.Add(1)
		return
	}

	host, err := o.dialer.DialContext(o.ctx, "udp", target.String())
	if err != nil {
		o.dropFlow(f)
		o.dataError("nat: udp dial failed", "src", src, "dst", dst, "err", err)
		return
	}
	guest, err := r.Accept()
	if err != nil {
		host.Close()
		o.dropFlow(f)
		o.dataError("nat: udp accept failed", "src", src, "dst", dst, "err", err)
		return
	}

	o.mu.Lock()
	f.guest, f.host, f.hostRW = guest, host, host
	if sc, ok := host.(syscall.Conn); ok {
		if h, err := newHostIO(sc, false); err == nil {
			f.hostRW = h
		}
	}
	if cur, ok := o.udp.get(f.key); o.closed || !ok || cur != f {
		// Expired or closed while we dialed.
		o.mu.Unlock()
		f.close()
		o.udpDropped.Add(1)
		return
	}
	notifier, inline := guest.(datagramNotifier)
	h, hostRaw := f.hostRW.(*hostIO)
	_, guestNow := guest.(nowWriter)
	var poller *replyPoller
	if hostRaw && guestNow {
		poller = o.replyPollerLocked()
	}
	if poller != nil {
		// Set before the flow can be closed: close takes it out.
		f.poller = poller
	}
	if !inline {
		o.wg.Add(1)
	}
	if poller == nil {
		o.wg.Add(1)
	}
	o.mu.Unlock()
	o.udpFlows.Add(1)
	if inline {
		// The first datagram, queued by Accept, comes first; closing the
		// guest conn ends the calls.
		notifier.OnDatagram(func(p []byte) { o.sendToHost(f, p) })
	} else {
		go o.udpGuestToHost(f)
	}
	if poller == nil {
		go o.udpHostToGuest(f)
		return
	}
	if err := poller.add(f, h); err != nil {
		if isClosed(err) {
			return // ended while it was set up
		}
		// Out of memory for epoll entries, say: the flow cannot hear
		// back, so it ends.
		o.dataError("nat: udp flow cannot wait for replies", "src", src, "dst", dst, "err", err)
		o.endFlow(f)
	}
}

// nowWriter is implemented by the gateway's UDP sockets (stack.UDPConn):
// WriteNow sends without waiting, failing with syscall.EAGAIN when there
// is no room.
type nowWriter interface {
	WriteNow(p []byte) (int, error)
}

// replyPollerLocked returns the network's reply poller, starting it on
// the first flow; nil when it cannot be made (the flows then get a
// goroutine each). o.mu is held.
func (o *Outbound) replyPollerLocked() *replyPoller {
	if o.poller != nil || o.pollerErr != nil {
		return o.poller
	}
	p, err := newReplyPoller(o.replies)
	if err != nil {
		o.pollerErr = err
		o.logger.Warn("nat: udp replies need a goroutine per flow", "err", err)
		return nil
	}
	o.poller = p
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		if err := p.run(); err != nil {
			o.logger.Error("nat: udp replies stopped", "err", err)
		}
	}()
	return p
}

// replies sends f's queued replies to the guest without waiting, at most
// replyBurst of them (replyPoller calls it when f's host socket is
// readable, and again while it stays so), and reports whether it read
// the socket dry.
func (o *Outbound) replies(f *udpFlow) (drained bool) {
	h := f.hostRW.(*hostIO)
	g := f.guest.(nowWriter)
	for range replyBurst {
		buf, n, err := h.readPooled(&udpBufs, false)
		switch {
		case errors.Is(err, errWouldBlock):
			return true
		case icmpReported(err):
			// As in udpHostToGuest: an ICMP error for an earlier send.
			continue
		case isClosed(err):
			return true // closed by whoever ended the flow
		case err != nil:
			o.dataError("nat: udp receive from host failed", "src", f.key.Src, "dst", f.key.Dst, "err", err)
			o.endFlow(f)
			return true
		}
		o.mu.Lock()
		o.udp.received(f.key, o.cfg.Clock())
		o.mu.Unlock()
		_, err = g.WriteNow((*buf)[:n])
		udpBufs.Put(buf)
		switch {
		case err == nil:
		case isClosed(err):
			return true
		case errors.Is(err, syscall.EAGAIN):
			o.udpDropped.Add(1)
		default:
			o.dataError("nat: udp send to guest failed", "src", f.key.Src, "dst", f.key.Dst, "err", err)
		}
	}
	return false
}

// sendToHost sends a datagram from the guest to the host without waiting:
// one the host socket has no room for is dropped and counted.
func (o *Outbound) sendToHost(f *udpFlow, p []byte) {
	o.mu.Lock()
	o.udp.sent(f.key, o.cfg.Clock())
	o.mu.Unlock()
	var err error
	if h, ok := f.hostRW.(*hostIO); ok {
		_, err = h.writeNow(p)
	} else {
		_, err = f.hostRW.Write(p)
	}
	o.noteHostSend(f, err)
}

// noteHostSend accounts for how a send to the host went (err) and reports
// whether the flow's socket is closed.
func (o *Outbound) noteHostSend(f *udpFlow, err error) (closed bool) {
	switch {
	case err == nil:
	case isClosed(err):
		return true
	case icmpReported(err):
		// An earlier datagram drew an ICMP error (nothing listening,
		// unreachable): ordinary for UDP, and the flow stays, as a
		// kernel NAT would keep it.
	case errors.Is(err, errWouldBlock):
		o.udpDropped.Add(1)
	default:
		o.dataError("nat: udp send to host failed", "src", f.key.Src, "dst", f.key.Dst, "err", err)
	}
	return false
}

// dropFlow removes a flow that never got its sockets.
func (o *Outbound) dropFlow(f *udpFlow) {
	o.mu.Lock()
	if cur, ok := o.udp.get(f.key); ok && cur == f {
		o.udp.remove(f.key)
	}
	o.mu.Unlock()
	o.udpDropped.Add(1)
}

// udpGuestToHost copies datagrams from the guest to the host socket, for a
// guest conn that cannot say when one arrives (sendToHost's fallback).
func (o *Outbound) udpGuestToHost(f *udpFlow) {
	defer o.wg.Done()
	defer o.endFlow(f)
	for {
		buf, n, err := readDatagram(f.guest)
		if err != nil {
			return
		}
		o.mu.Lock()
		o.udp.sent(f.key, o.cfg.Clock())
		o.mu.Unlock()
		_, err = f.hostRW.Write((*buf)[:n])
		udpBufs.Put(buf)
		if o.noteHostSend(f, err) {
			return
		}
	}
}

// udpHostToGuest copies replies from the host socket to the guest.
func (o *Outbound) udpHostToGuest(f *udpFlow) {
	defer o.wg.Done()
	defer o.endFlow(f)
	for {
		buf, n, err := readDatagram(f.hostRW)
		if err != nil {
			if icmpReported(err) {
				// A connected UDP socket reports ICMP errors for
				// earlier sends on the next read; they do not end the
				// flow.
				continue
			}
			return
		}
		o.mu.Lock()
		o.udp.received(f.key, o.cfg.Clock())
		o.mu.Unlock()
		_, err = f.guest.Write((*buf)[:n])
		udpBufs.Put(buf)
		if err != nil {
			if isClosed(err) {
				return
			}
			o.dataError("nat: udp send to guest failed", "src", f.key.Src, "dst", f.key.Dst, "err", err)
		}
	}
}

// icmpReported reports whether err is an ICMP error the kernel queued on a
// connected UDP socket rather than a failure of the socket itself.
func icmpReported(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EMSGSIZE)
}

// endFlow removes f from the table (if the janitor has not already) and
// closes its sockets; it runs when either copy loop ends, so the other one
// ends too.
func (o *Outbound) endFlow(f *udpFlow) {
	o.mu.Lock()
	if cur, ok := o.udp.get(f.key); ok && cur == f {
		o.udp.remove(f.key)
	}
	o.mu.Unlock()
	f.close()
}

// janitor expires idle UDP flows and stale echo state until Close.
func (o *Outbound) janitor() {
	defer o.wg.Done()
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	for {
		select {
		case <-o.ctx.Done():
			return
		case <-t.C:
		}
		o.expire()
	}
}

// expire runs one expiry pass at the current Config.Clock time.
func (o *Outbound) expire() {
	now := o.cfg.Clock()
	o.mu.Lock()
	expired := o.udp.expire(now)
	o.mu.Unlock()
	for _, f := range expired {
		f.close()
	}
	o.echo.expire(now)
}
