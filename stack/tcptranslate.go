package stack

// TCP flows without netstack (Config.TranslateTCP), as pasta carries them:
// the gateway speaks TCP to the guest itself, segment by segment, and moves
// the bytes straight between the guest's segments and the host socket
// nat dialed. There is no TCP stack in between and no buffer of our own
// in the common case:
//
//   - Guest -> host: an in-order segment's payload is written to the host
//     socket on the receive path and acknowledged. What the socket does
//     not take at once is kept (pending) and flushed when it can take
//     more; the window the gateway advertises shrinks by what is kept, so
//     pending never exceeds txMaxPending.
//   - Host -> guest: bytes are peeked from the host socket (SO_PEEK_OFF)
//     into frames for the guest, as much as the guest's window allows,
//     and only discarded from the socket when the guest acknowledges
//     them. Retransmission rewinds the peek offset (go-back-N), so the
//     host socket's receive queue is the retransmission buffer.
//
// The translator takes a guest's IPv4 SYN before netstack sees it, asks
// the TCPHandler (on a goroutine) whether and where to connect, and only
// answers the SYN once the host socket is connected, so a refused
// connection is a RST to the guest, as on the netstack path. Segments of
// flows it does not know (netstack's own connections, published ports
// dialed through the gateway, IPv6) go to netstack as before.
//
// What it leaves out, because the guest is one switch hop away: SACK,
// timestamps and congestion control (the guest's receive window is the
// only limit; loss on the link is a full queue, repaired by go-back-N
// after three duplicate ACKs or a timeout).

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	vswitch "github.com/usernet/usernet/switch"
)

const (
	// txMaxPending bounds the guest's bytes accepted but not yet taken by
	// the host socket; it is also the largest window advertised.
	txMaxPending = 256 << 10
	// txWindowShift is the window scale the gateway offers: enough for
	// txMaxPending in the 16-bit window field.
	txWindowShift = 3
	// txAckDelay is how long an ACK for a small segment waits for data
	// to ride on (the host's reply to a request usually comes first).
	txAckDelay = time.Millisecond
	// Retransmission timeouts toward the guest, and how many in a row end
	// the flow with a reset.
	txMinRTO     = 200 * time.Millisecond
	txMaxRTO     = 10 * time.Second
	txMaxRetries = 10

	txMinMSS = 88
	// txDiscardBatch is how many acknowledged bytes wait in the host
	// socket before one read discards them.
	txDiscardBatch = 64 << 10
	txHeaders      = header.EthernetMinimumSize + header.IPv4MinimumSize + header.TCPMinimumSize
	// txMaxSuper is the most payload one super-frame to the guest
	// carries: what an IPv4 packet can hold.
	txMaxSuper = 0xffff - header.IPv4MinimumSize - header.TCPMinimumSize
)

// txAnswerTimeout bounds how long a translated SYN waits for the
// TCPHandler's answer before the guest gets a RST (nat's own dial timeout
// is shorter). A variable for tests.
var txAnswerTimeout = 30 * time.Second

// txState is where a translated flow is in its life.
type txState uint8

const (
	txDialing     txState = iota // SYN taken; the TCPHandler is deciding
	txSynReceived                // SYN-ACK sent; waiting for the guest's ACK
	txEstablished                // carrying data (either side may have closed its half)
	txClosed                     // done or aborted; out of the table
)

// txTable holds the translator's flows, by addresses as the guest's frames
// carry them, and the gateway ports netstack serves itself (ListenTCP):
// SYNs to those stay there.
type txTable struct {
	flowMap[*txFlow]
	lmu       sync.Mutex
	listening map[uint16]int
}

// listen and unlisten count netstack's listeners on a gateway port.
func (t *txTable) listen(port uint16) {
	t.lmu.Lock()
	if t.listening == nil {
		t.listening = make(map[uint16]int)
	}
	t.listening[port]++
	t.lmu.Unlock()
}

func (t *txTable) unlisten(port uint16) {
	t.lmu.Lock()
	if t.listening[port]--; t.listening[port] <= 0 {
		delete(t.listening, port)
	}
	t.lmu.Unlock()
}

// served reports whether netstack listens on a gateway port.
func (t *txTable) served(port uint16) bool {
	t.lmu.Lock()
	defer t.lmu.Unlock()
	return t.listening[port] > 0
}

// TranslationSupported reports whether this kernel allows TCP translation
// (Config.TranslateTCP): it needs a peek offset on TCP sockets
// (SO_PEEK_OFF, Linux 6.10), which its retransmission buffer depends on.
func TranslationSupported() bool { return peekOffsetWorks() }

var peekOffsetWorks = sync.OnceValue(func() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0) == nil
})

// seqLT reports whether sequence number a is before b (RFC 793 modular
// comparison).
func seqLT(a, b uint32) bool { return int32(a-b) < 0 }

// txFlow is one translated connection.
type txFlow struct {
	g   *Gateway
	key flowKey4
	// Addresses as the gateway sends: local is what the guest dialed.
	local, remote tcpip.Address
	lport, rport  uint16

	mu    sync.Mutex
	state txState
	peer  vswitch.MAC // the guest's MAC
	host  *net.TCPConn
	rc    syscall.RawConn
	fd    int
	// onDone runs once, when the flow leaves the table.
	onDone func()

	// Guest -> host.
	irs      uint32 // the guest's initial sequence number
	rcvNxt   uint32 // next sequence number expected from the guest
	rcvShift uint8  // our window scale (0 when the guest offered none)
	pending  []byte // accepted from the guest, not yet written to the host
	flushing bool   // a goroutine waits to flush pending
	guestFin bool   // the guest's FIN is in (rcvNxt counts it)
	shutWr   bool   // the host socket's write side is shut
	ackDue   bool   // an ACK is owed to the guest
	ackTimer *time.Timer

	// Host -> guest.
	iss      uint32 // our initial sequence number
	sndUna   uint32 // oldest byte the guest has not acknowledged
	sndNxt   uint32 // next byte to send
	sndWnd   uint32 // the guest's window, in bytes
	sndShift uint8  // the guest's window scale
	mss      int    // largest payload per segment to the guest
	hostEOF  bool   // the host socket reached EOF (a FIN follows its bytes)
	bulk     bool   // the last peek filled its frame: peek super-frames
	// acked counts bytes the guest acknowledged that are still in the
	// host socket: they are discarded in batches (discard), not one
	// syscall per ACK, and whenever the socket has nothing new.
	acked    uint32
	finSent  bool // our FIN is sent; it is sequence number sndNxt-1
	finAcked bool
	dupAcks  int
	// resend is set by rewind until the segment at sndUna is sent again.
	resend bool
	// recover is sndNxt when the last rewind happened: until the guest
	// acknowledges it, duplicate ACKs are echoes of that loss.
	recover  uint32
	rto      time.Duration
	retries  int
	rtoTimer *time.Timer
	rtoArmed bool
}

// receiveTCP is the translator's part of the receive path: it reports
// whether it took the frame. ip is valid and carries TCP.
func (g *Gateway) receiveTCP(f *vswitch.Frame, ip header.IPv4) bool {
	if ip.More() || ip.FragmentOffset() != 0 || f.Dst() != g.mac {
		return false
	}
	t := header.TCP(ip.Payload())
	if len(t) < header.TCPMinimumSize || int(t.DataOffset()) < header.TCPMinimumSize || int(t.DataOffset()) > len(t) {
		return false // netstack drops it and counts why
	}
	k := flowKey4{
		src: ip.SourceAddress().As4(), dst: ip.DestinationAddress().As4(),
		sport: t.SourcePort(), dport: t.DestinationPort(),
	}
	if fl := g.tx.lookup(k); fl != nil {
		fl.input(f.Src(), t)
		return true
	}
	if t.Flags() != header.TCPFlagSyn {
		return false // not ours: netstack answers (or resets) it
	}
	return g.translateSYN(f.Src(), k, ip, t)
}

// translateSYN takes a guest's SYN for a new flow, unless netstack listens
// on the destination, and hands it to the TCPHandler.
func (g *Gateway) translateSYN(src vswitch.MAC, k flowKey4, ip header.IPv4, t header.TCP) bool {
	dst := ip.DestinationAddress()
	if g.ownsV4(dst) && g.tx.served(k.dport) {
		return false
	}
	if g.cfg.TCP == nil || g.closed.Load() {
		return false // netstack refuses it
	}
	opts := header.ParseSynOptions(t.Options(), false)
	fl := &txFlow{
		g: g, key: k, state: txDialing, peer: src,
		local: dst, remote: ip.SourceAddress(),
		lport: k.dport, rport: k.sport,
		irs: t.SequenceNumber(), rcvNxt: t.SequenceNumber() + 1,
		iss:    rand.Uint32(),
		mss:    min(int(opts.MSS), g.cfg.MTU-header.IPv4MinimumSize-header.TCPMinimumSize),
		sndWnd: uint32(t.WindowSize()),
		rto:    txMinRTO,
	}
	// An MSS below what Linux accepts (TCP_MIN_MSS) would only mean a
	// flood of tiny frames.
	fl.mss = max(fl.mss, txMinMSS)
	if opts.WS >= 0 {
		fl.sndShift = uint8(min(opts.WS, 14))
		fl.rcvShift = txWindowShift
	}
	fl.sndUna, fl.sndNxt, fl.recover = fl.iss, fl.iss, fl.iss
	// Armed before fl is shared, so without its lock.
	fl.rtoArmed = true
	fl.rtoTimer = time.AfterFunc(txAnswerTimeout, fl.timeout)
	if !g.tx.add(k, fl) {
		fl.rtoTimer.Stop()
		return true // a retransmitted SYN raced its first copy
	}
	r := &TCPRequest{
		Src: netip.AddrPortFrom(fromTCPIP(fl.remote), fl.rport),
		Dst: netip.AddrPortFrom(fromTCPIP(fl.local), fl.lport),
		tx:  fl,
	}
	g.cfg.TCP.HandleTCP(r)
	return true
}

// errTranslated is Accept's answer to a translated request.
var errTranslated = errors.New("translated TCP request: answer it with Translate")

// Translated reports whether the request came to the TCP translator
// (Config.TranslateTCP): it must be answered with Translate or Reject,
// not Accept.
func (r *TCPRequest) Translated() bool { return r.tx != nil }

// Translate completes the guest's handshake and carries the connection
// between the guest and host, a connected host socket, without netstack.
// It takes over host. onDone runs (once, on some goroutine) when the flow
// has ended in both directions or was aborted; closing the returned flow
// aborts it (RST both ways). It fails if the request was already answered
// or is not Translated; host is then closed and the guest reset.
func (r *TCPRequest) Translate(host *net.TCPConn, onDone func()) (io.Closer, error) {
	r.mu.Lock()
	fl := r.tx
	answered := r.done
	r.done = true
	r.mu.Unlock()
	if fl == nil || answered {
		host.Close()
		return nil, convertError("translate "+r.flow(), &tcpip.ErrInvalidEndpointState{})
	}
	rc, err := host.SyscallConn()
	if err != nil {
		host.Close()
		fl.abort()
		return nil, err
	}
	fd := -1
	var serr error
	rc.Control(func(p uintptr) {
		fd = int(p)
		// Peeks start at the first byte the guest has not seen; reads
		// that discard acknowledged bytes move that offset back with
		// them.
		serr = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0)
	})
	if serr != nil {
		host.Close()
		fl.abort()
		return nil, convertError("translate "+r.flow(), &tcpip.ErrNotSupported{})
	}
	fl.mu.Lock()
	if fl.state != txDialing {
		fl.mu.Unlock()
		host.Close()
		return nil, convertError("translate "+r.flow(), &tcpip.ErrConnectionAborted{})
	}
	fl.host, fl.rc, fl.fd, fl.onDone = host, rc, fd, onDone
	fl.state = txSynReceived
	fl.g.stats.tcpTranslated.Add(1)
	var out []*vswitch.Frame
	out = fl.appendSynAck(out)
	fl.armRTO()
	fl.send(out)
	fl.mu.Unlock()
	go fl.readHost()
	return fl, nil
}

// input handles one segment of the flow from the guest (receive path).
func (fl *txFlow) input(src vswitch.MAC, t header.TCP) {
	var out []*vswitch.Frame
	fl.mu.Lock()
	fl.peer = src
	done := fl.segment(t, &out)
	fl.send(out)
	fl.mu.Unlock()
	if done {
		fl.finish()
	}
}

// segment processes a segment with fl.mu held; it reports whether the
// flow has ended and must be finished.
func (fl *txFlow) segment(t header.TCP, out *[]*vswitch.Frame) bool {
	flags := t.Flags()
	seq := t.SequenceNumber()
	una, nxt, wnd := fl.sndUna, fl.sndNxt, fl.sndWnd
	switch fl.state {
	case txDialing:
		return false // the SYN's answer is not known yet; the guest retries
	case txClosed:
		return false
	case txSynReceived:
		if flags.Contains(header.TCPFlagRst) {
			return fl.close()
		}
		if flags.Contains(header.TCPFlagSyn) {
			if seq == fl.irs {
				*out = fl.appendSynAck(*out) // our SYN-ACK was lost
			}
			return false
		}
		if !flags.Contains(header.TCPFlagAck) || t.AckNumber() != fl.iss+1 {
			return false
		}
		fl.state = txEstablished
		fl.sndUna, fl.sndNxt = fl.iss+1, fl.iss+1
		fl.retries, fl.rto = 0, txMinRTO
		fl.stopRTO()
	}

	// Established.
	if flags.Contains(header.TCPFlagRst) {
		// Accept a reset anywhere in the window we advertise (RFC 5961
		// would send a challenge ACK for the rest; the guest is local).
		if off := seq - fl.rcvNxt; off <= fl.window() {
			if fl.host != nil {
				fl.host.SetLinger(0)
			}
			return fl.close()
		}
		return false
	}
	if flags.Contains(header.TCPFlagSyn) {
		*out = fl.appendSegment(*out, header.TCPFlagAck, fl.sndNxt) // challenge ACK
		return false
	}
	if !flags.Contains(header.TCPFlagAck) {
		return false
	}
	if !fl.handleAck(t, out) {
		return fl.state == txClosed
	}
	if !fl.handleData(t, seq, flags, out) {
		return true
	}
	// What the host sends goes out when readHost sees it arrive. Only a
	// segment that changes what the guest can take (the handshake's end,
	// an ACK that moves, a window, a rewind) can let out bytes the socket
	// already holds; for the rest a peek would find nothing new, and in
	// request/response traffic that is every request.
	if fl.sndUna != una || fl.sndNxt != nxt || fl.sndWnd != wnd {
		fl.pump(out)
	}
	return fl.state == txClosed || fl.complete()
}

// handleAck processes the guest's acknowledgement and window; it reports
// false when the flow was aborted.
func (fl *txFlow) handleAck(t header.TCP, out *[]*vswitch.Frame) bool {
	ack := t.AckNumber()
	wnd := uint32(t.WindowSize()) << fl.sndShift
	if seqLT(fl.sndNxt, ack) {
		// Acknowledges what was never sent: say where we are.
		*out = fl.appendSegment(*out, header.TCPFlagAck, fl.sndNxt)
		return true
	}
	switch {
	case seqLT(fl.sndUna, ack):
		n := ack - fl.sndUna
		if fl.finSent && ack == fl.sndNxt {
			fl.finAcked = true
			n--
		}
		fl.acked += n
		if fl.acked >= txDiscardBatch && !fl.discard() {
			fl.reset(out)
			return false
		}
		fl.sndUna = ack
		fl.dupAcks, fl.rto = 0, txMinRTO
		if fl.sndUna == fl.sndNxt {
			fl.stopRTO()
		} else {
			fl.armRTO()
		}
	case ack == fl.sndUna && fl.sndNxt != fl.sndUna && len(t.Payload()) == 0 &&
		wnd == fl.sndWnd && !t.Flags().Contains(header.TCPFlagFin) && !seqLT(ack, fl.recover):
		if fl.dupAcks++; fl.dupAcks == 3 {
			fl.rewind()
		}
	}
	fl.sndWnd = wnd
	// Any acceptable ACK shows the guest alive: timeouts count toward
	// giving up only while it is silent (a zero window it keeps
	// answering probes for can last).
	fl.retries = 0
	return true
}

// handleData writes the guest's in-order bytes to the host and takes its
// FIN; it reports false when the flow was aborted.
func (fl *txFlow) handleData(t header.TCP, seq uint32, flags header.TCPFlags, out *[]*vswitch.Frame) bool {
	payload := t.Payload()
	fin := flags.Contains(header.TCPFlagFin)
	if len(payload) == 0 && !fin {
		return true
	}
	if seqLT(seq, fl.rcvNxt) {
		// A retransmission overlapping what we have: keep the new part.
		skip := fl.rcvNxt - seq
		if skip > uint32(len(payload)) || (skip == uint32(len(payload)) && !fin) || fl.guestFin {
			*out = fl.appendSegment(*out, header.TCPFlagAck, fl.sndNxt)
			return true
		}
		payload = payload[skip:]
	} else if seq != fl.rcvNxt || fl.guestFin {
		// Out of order (a segment before it was lost): a duplicate ACK
		// makes the guest resend from rcvNxt.
		*out = fl.appendSegment(*out, header.TCPFlagAck, fl.sndNxt)
		return true
	}
	if w := fl.window(); uint32(len(payload)) > w {
		payload, fin = payload[:w], false
	}
	if len(payload) > 0 {
		if !fl.write(payload, out) {
			return false
		}
		fl.rcvNxt += uint32(len(payload))
	}
	if fin {
		fl.rcvNxt++
		fl.guestFin = true
		if len(fl.pending) == 0 {
			fl.shutdownWrite()
		}
	}
	// ACK at once a large burst, what fills the window, or a FIN that
	// ends the flow (ours is out already); hold the ACK of a small
	// segment for the host's answer to carry, and never hold two. A FIN
	// that arrives first is held too, as Linux holds it: the host
	// usually closes in turn, and our FIN then carries the ACK, one
	// frame to the guest instead of two.
	if (fin && fl.finSent) || fl.ackDue || len(payload) >= 2*fl.mss || len(fl.pending) > 0 {
		*out = fl.appendSegment(*out, header.TCPFlagAck, fl.sndNxt)
	} else {
		fl.ackDue = true
		if fl.ackTimer == nil {
			fl.ackTimer = time.AfterFunc(txAckDelay, fl.sendDueAck)
		} else {
			fl.ackTimer.Reset(txAckDelay)
		}
	}
	return true
}

// write sends p to the host socket, keeping what it does not take; it
// reports false when the socket failed and the flow was aborted.
func (fl *txFlow) write(p []byte, out *[]*vswitch.Frame) bool {
	if len(fl.pending) == 0 && !fl.shutWr {
		n, err := rawWrite(fl.fd, p)
		switch {
		case err == unix.EAGAIN:
			n = 0
		case err != nil:
			fl.reset(out)
			return false
		}
		p = p[n:]
	}
	if len(p) > 0 {
		fl.pending = append(fl.pending, p...)
		if !fl.flushing {
			fl.flushing = true
			go fl.flush()
		}
	}
	return true
}

// flush waits until the host socket takes the pending bytes, then opens
// the window again.
func (fl *txFlow) flush() {
	var out []*vswitch.Frame
	done := false
	fl.rc.Write(func(uintptr) bool {
		fl.mu.Lock()
		defer func() {
			fl.send(out)
			out = out[:0]
			fl.mu.Unlock()
		}()
		if fl.state == txClosed {
			return true
		}
		n, err := rawWrite(fl.fd, fl.pending)
		switch {
		case err == unix.EAGAIN:
			return false
		case err != nil:
			fl.reset(&out)
			done = true
			return true
		}
		fl.pending = fl.pending[:copy(fl.pending, fl.pending[n:])]
		if len(fl.pending) > 0 {
			return false
		}
		fl.pending, fl.flushing = nil, false
		if fl.guestFin {
			fl.shutdownWrite()
		}
		out = fl.appendSegment(out, header.TCPFlagAck, fl.sndNxt) // window update
		done = fl.complete()
		return true
	})
	if done {
		fl.finish()
	}
}

// shutdownWrite passes the guest's FIN on to the host.
func (fl *txFlow) shutdownWrite() {
	if !fl.shutWr {
		fl.shutWr = true
		unix.Shutdown(fl.fd, unix.SHUT_WR)
	}
}

// window is what the gateway can take from the guest now.
func (fl *txFlow) window() uint32 {
	return uint32(txMaxPending - len(fl.pending))
}

// sendDueAck is the delayed ACK's timer.
func (fl *txFlow) sendDueAck() {
	var out []*vswitch.Frame
	fl.mu.Lock()
	if fl.ackDue && fl.state == txEstablished {
		out = fl.appendSegment(out, header.TCPFlagAck, fl.sndNxt)
	}
	fl.send(out)
	fl.mu.Unlock()
}

// readHost waits for the host socket to have bytes (or EOF) and sends what
// the guest's window allows; ACKs from the guest send the rest.
func (fl *txFlow) readHost() {
	var out []*vswitch.Frame
	done := false
	fl.rc.Read(func(uintptr) bool {
		fl.mu.Lock()
		out = out[:0]
		more := fl.pump(&out)
		done = fl.state == txClosed || fl.complete()
		fl.send(out)
		fl.mu.Unlock()
		return !more || done
	})
	if done {
		fl.finish()
	}
}

// pump sends the host's bytes the guest has room for, with fl.mu held. It
// reports whether readHost should keep waiting for the socket: false
// once EOF was seen or the flow is over.
func (fl *txFlow) pump(out *[]*vswitch.Frame) bool {
	if fl.state != txEstablished {
		return fl.state != txClosed
	}
	for !fl.finSent {
		inFlight := fl.sndNxt - fl.sndUna
		wnd := fl.sndWnd
		if fl.resend && inFlight == 0 {
			// The segment at sndUna may go even into a closed window
			// (as Linux resends it): a guest whose buffer is full of
			// what came after a lost segment cannot open it otherwise.
			wnd = max(wnd, uint32(fl.mss))
		}
		if inFlight >= wnd {
			if fl.sndWnd == 0 && !fl.rtoArmed {
				fl.armRTO() // probe the zero window
			}
			return !fl.hostEOF
		}
		// The first read after a pause peeks one segment into a small
		// frame; once one came back full, a 64 KiB super-frame (the
		// switch or the guest's TAP cuts it into segments).
		room := min(int(wnd-inFlight), fl.mss)
		if fl.bulk {
			room = min(int(wnd-inFlight), txMaxSuper/fl.mss*fl.mss)
		}
		f := vswitch.NewFrame(txHeaders + room)
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fl.fd),
			uintptr(unsafe.Pointer(&f.Data[txHeaders])), uintptr(room), unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EAGAIN:
			f.DecRef()
			fl.bulk = false
			// Nothing new in the socket: free what the guest has, or a
			// host sender whose window those bytes fill waits forever.
			if !fl.discard() {
				fl.reset(out)
				return false
			}
			return true
		case errno != 0:
			f.DecRef()
			fl.reset(out)
			return false
		case n == 0:
			f.DecRef()
			fl.hostEOF = true
			fl.finSent = true
			fl.resend = false
			*out = fl.appendSegment(*out, header.TCPFlagFin|header.TCPFlagAck, fl.sndNxt)
			fl.sndNxt++
			if !fl.rtoArmed {
				fl.armRTO()
			}
			return false
		}
		f.Resize(txHeaders + int(n))
		fl.bulk = int(n) == room
		fl.resend = false
		fl.finishData(f, int(n))
		*out = append(*out, f)
		fl.sndNxt += uint32(n)
		if !fl.rtoArmed {
			fl.armRTO()
		}
	}
	return false
}

// finishData writes the headers of a data segment of n bytes, leaving
// its checksum (and its cutting into segments, when it is larger than
// one) to whoever takes the frame: the guest's TAP, or the switch for a
// port without offloads.
func (fl *txFlow) finishData(f *vswitch.Frame, n int) {
	fl.writeHeaders(f, header.TCPFlagAck|header.TCPFlagPsh, fl.sndNxt, 0, fl.scaledWindow())
	t := header.TCP(f.Data[header.EthernetMinimumSize+header.IPv4MinimumSize:])
	t.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, fl.local, fl.remote, uint16(len(t))))
	f.Hdr = vswitch.VnetHdr{
		Flags:      vswitch.VnetFlagNeedsCsum,
		HdrLen:     txHeaders,
		CsumStart:  header.EthernetMinimumSize + header.IPv4MinimumSize,
		CsumOffset: header.TCPChecksumOffset,
	}
	if n > fl.mss {
		f.Hdr.GSOType = vswitch.GSOTCPv4
		f.Hdr.GSOSize = uint16(fl.mss)
	}
}

// discard drops the bytes the guest has acknowledged from the host
// socket: recv with MSG_TRUNC drops bytes from a TCP socket without
// copying them. It reports false if the socket failed.
func (fl *txFlow) discard() bool {
	if fl.acked == 0 {
		return true
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fl.fd), 0, uintptr(fl.acked),
		unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 || uint32(n) != fl.acked {
		return false
	}
	fl.acked = 0
	return true
}

// rewind makes the next pump resend everything unacknowledged.
func (fl *txFlow) rewind() {
	fl.g.stats.tcpResent.Add(1)
	fl.recover = fl.sndNxt
	unix.SetsockoptInt(fl.fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, int(fl.acked))
	fl.sndNxt = fl.sndUna
	if fl.finSent && !fl.finAcked {
		fl.finSent = false // pump peeks EOF again and resends the FIN
	}
	fl.dupAcks = 0
	fl.resend = true
}

// stopRTO stops the retransmission timer.
func (fl *txFlow) stopRTO() {
	if fl.rtoArmed {
		fl.rtoArmed = false
		fl.rtoTimer.Stop()
	}
}

// armRTO (re)starts the retransmission timer.
func (fl *txFlow) armRTO() {
	fl.rtoArmed = true
	if fl.rtoTimer == nil {
		fl.rtoTimer = time.AfterFunc(fl.rto, fl.timeout)
		return
	}
	fl.rtoTimer.Reset(fl.rto)
}

// timeout is the retransmission timer: it resends the SYN-ACK, or
// everything unacknowledged, or probes a zero window.
func (fl *txFlow) timeout() {
	var out []*vswitch.Frame
	fl.mu.Lock()
	fl.rtoArmed = false
	done := false
	switch {
	case fl.state == txClosed:
	case fl.state == txDialing:
		// The handler never answered.
		fl.reset(&out)
		done = true
	case fl.retries >= txMaxRetries:
		fl.reset(&out)
		done = true
	case fl.state == txSynReceived:
		fl.backoff()
		out = fl.appendSynAck(out)
	case fl.sndNxt != fl.sndUna:
		fl.backoff()
		fl.rewind()
		fl.pump(&out)
	case fl.sndWnd == 0 && !fl.hostEOF:
		// Zero window, nothing outstanding: a segment at sndUna-1 makes
		// the guest answer with its current window.
		fl.backoff()
		out = fl.appendSegment(out, header.TCPFlagAck, fl.sndUna-1)
	}
	fl.send(out)
	fl.mu.Unlock()
	if done {
		fl.finish()
	}
}

func (fl *txFlow) backoff() {
	fl.retries++
	fl.rto = min(2*fl.rto, txMaxRTO)
	fl.armRTO()
}

// complete reports whether both directions have ended: the flow is done.
func (fl *txFlow) complete() bool {
	if fl.state == txEstablished && fl.guestFin && fl.shutWr && fl.finAcked {
		// Acknowledged bytes may still sit in the host socket, so its
		// close sends a RST after our FIN; the host has sent its own FIN
		// and ours came first, so its side is already closed cleanly
		// (TestTCPTranslateHostSpeaksFirst).
		fl.close()
		return true
	}
	return false
}

// close ends the flow with fl.mu held: it leaves the table and its timers
// stop. finish (without the lock) closes the host socket and runs onDone.
func (fl *txFlow) close() bool {
	if fl.state == txClosed {
		return true
	}
	fl.state = txClosed
	fl.g.tx.remove(fl.key, fl)
	fl.stopRTO()
	if fl.ackTimer != nil {
		fl.ackTimer.Stop()
	}
	return true
}

// reset ends the flow with fl.mu held: a RST to the guest and, once
// there is a host socket, one to the host too (SO_LINGER 0 on close).
func (fl *txFlow) reset(out *[]*vswitch.Frame) {
	if fl.state == txClosed {
		return
	}
	seq := fl.sndNxt
	switch fl.state {
	case txDialing:
		seq = 0 // the guest checks only that the RST acknowledges its SYN
	case txSynReceived:
		seq = fl.iss + 1
	}
	*out = fl.appendSegment(*out, header.TCPFlagRst|header.TCPFlagAck, seq)
	if fl.host != nil {
		fl.host.SetLinger(0)
	}
	fl.close()
}

// abort resets the flow from outside fl.mu and finishes it.
func (fl *txFlow) abort() {
	var out []*vswitch.Frame
	fl.mu.Lock()
	fl.reset(&out)
	fl.send(out)
	fl.mu.Unlock()
	fl.finish()
}

// Close aborts the flow (nat closes its live flows this way).
func (fl *txFlow) Close() error {
	fl.abort()
	return nil
}

// send hands frames built under fl.mu to the switch.
func (fl *txFlow) send(out []*vswitch.Frame) {
	if len(out) > 0 {
		fl.g.sendFrames(out)
	}
}

// finish closes the host socket and runs onDone, once; the flow has left
// the table.
func (fl *txFlow) finish() {
	fl.mu.Lock()
	host, onDone := fl.host, fl.onDone
	fl.host, fl.onDone = nil, nil
	fl.mu.Unlock()
	if host != nil {
		host.Close()
	}
	if onDone != nil {
		onDone()
	}
}

// appendSynAck appends the answer to the guest's SYN: our MSS, and our
// window scale if the guest offered one.
func (fl *txFlow) appendSynAck(out []*vswitch.Frame) []*vswitch.Frame {
	optLen := 4
	if fl.rcvShift > 0 || fl.sndShift > 0 {
		optLen = 8
	}
	f := vswitch.NewFrame(txHeaders + optLen)
	opts := f.Data[txHeaders : txHeaders+optLen]
	mss := fl.g.cfg.MTU - header.IPv4MinimumSize - header.TCPMinimumSize
	opts[0], opts[1], opts[2], opts[3] = header.TCPOptionMSS, 4, byte(mss>>8), byte(mss)
	if optLen == 8 {
		opts[4], opts[5], opts[6], opts[7] = header.TCPOptionNOP, header.TCPOptionWS, 3, fl.rcvShift
	}
	// The SYN-ACK's window is never scaled (RFC 7323).
	fl.finishSegmentWindow(f, header.TCPFlagSyn|header.TCPFlagAck, fl.iss, optLen, uint16(min(fl.window(), 0xffff)))
	return append(out, f)
}

// appendSegment appends a segment without payload with the given flags
// and sequence number, acknowledging everything received.
func (fl *txFlow) appendSegment(out []*vswitch.Frame, flags header.TCPFlags, seq uint32) []*vswitch.Frame {
	f := vswitch.NewFrame(txHeaders)
	fl.finishSegmentWindow(f, flags, seq, 0, fl.scaledWindow())
	return append(out, f)
}

// scaledWindow is the window field of segments after the handshake.
func (fl *txFlow) scaledWindow() uint16 {
	return uint16(min(fl.window()>>fl.rcvShift, 0xffff))
}

// finishSegmentWindow writes the headers of a segment with a complete
// checksum.
func (fl *txFlow) finishSegmentWindow(f *vswitch.Frame, flags header.TCPFlags, seq uint32, optLen int, wnd uint16) {
	fl.writeHeaders(f, flags, seq, optLen, wnd)
	t := header.TCP(f.Data[header.EthernetMinimumSize+header.IPv4MinimumSize:])
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, fl.local, fl.remote, uint16(len(t)))
	t.SetChecksum(^checksum.Checksum(t, sum))
}

// writeHeaders writes f's Ethernet, IPv4 and TCP headers (all but the TCP
// checksum) in front of its payload and optLen bytes of options.
func (fl *txFlow) writeHeaders(f *vswitch.Frame, flags header.TCPFlags, seq uint32, optLen int, wnd uint16) {
	if flags.Contains(header.TCPFlagAck) {
		fl.ackDue = false
	}
	ethernetFrame(f.Data, fl.peer, fl.g.mac)
	ipLen := len(f.Data) - header.EthernetMinimumSize
	ip := header.IPv4(f.Data[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(ipLen),
		ID:          uint16(ipID.Add(1)),
		Flags:       header.IPv4FlagDontFragment,
		TTL:         udpTTL,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     fl.local,
		DstAddr:     fl.remote,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	t := header.TCP(ip[header.IPv4MinimumSize:])
	ack := uint32(0)
	if flags.Contains(header.TCPFlagAck) {
		ack = fl.rcvNxt
	}
	t.Encode(&header.TCPFields{
		SrcPort:    fl.lport,
		DstPort:    fl.rport,
		SeqNum:     seq,
		AckNum:     ack,
		DataOffset: uint8(header.TCPMinimumSize + optLen),
		Flags:      flags,
		WindowSize: wnd,
	})
}
