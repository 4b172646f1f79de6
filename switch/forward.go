package vswitch

import (
	"errors"
	"net"
	"sync"
)

// The packet path through the switch, in the order of the functions in
// this file and the ones it calls:
//
//  1. readLoop: the reader goroutine of a Reader port fills a batch of
//     64 KiB frames from the device (4 to 64, growing with the traffic). Frames that turn out small are copied
//     into small buffers so that queues hold memory in proportion to the
//     traffic; the large buffer is reused for the next read. Ports fed from
//     elsewhere (the netstack NIC) skip this step and call Input.
//  2. Input: counts the batch as received and takes each frame through
//     the steps below. It never holds a lock shared with other ports.
//  3. check: frames shorter than an Ethernet header, with a multicast
//     source, or whose offload header does not fit the frame are dropped
//     (DropMalformed).
//  4. admit (policy.go): on a port with a Binding, frames with a foreign
//     source MAC, ARP sender or IPv4 source are dropped (DropSpoof).
//  5. learn (fdb.go): the source MAC is recorded against this port. A MAC
//     already known here only refreshes an atomic timestamp.
//  6. forward: a unicast frame to a known MAC goes to that port, unless
//     ICC forbids it (reaches, policy.go: DropICC). Broadcast,
//     multicast (33:33:* included) and unknown unicast go to flood
//     (flood.go), which takes one reference per extra destination.
//  7. enqueue (queue.go): the frame joins the destination's bounded
//     queue. A full queue drops it and counts DropQueueFull on the
//     destination, unless the ingress port has Block set, in which case
//     Input waits for room. Writers are woken once per Input batch.
//  8. writeLoop: the destination's writer goroutine takes up to 64
//     queued frames at a time.
//  9. prepare: for a port without offloads, GSO super-frames are
//     segmented and partial checksums completed in software (segment.go).
// 10. write: one WriteFrames call for the batch, Tx counters (or
//     DropTxError), and the switch's references are dropped.

// readBatch is the most frames a reader goroutine offers ReadFrames, and
// minReadBatch the fewest. Each offered frame is a 64 KiB buffer, so the
// reader offers few while reads return few frames (an idle port pins
// 256 KiB, not 4 MiB) and doubles the offer while reads fill it.
const (
	readBatch    = 64
	minReadBatch = 4
)

// maxReadFailures is how many consecutive ReadFrames errors (other than
// net.ErrClosed) a reader goroutine tolerates before it gives up on the
// port; the port then only transmits until it is detached.
const maxReadFailures = 10

// readLoop is step 1: the reader goroutine of a Reader port.
func (a *Attachment) readLoop(r Reader) {
	defer a.readerDone.Done()
	slots := make([]*Frame, readBatch)
	batch := make([]*Frame, 0, readBatch)
	defer func() {
		for _, f := range slots {
			if f != nil {
				f.DecRef()
			}
		}
	}()
	failures := 0
	k := minReadBatch // slots offered: grows while reads fill them all
	for {
		for i, f := range slots[:k] {
			if f == nil {
				slots[i] = NewFrame(MaxFrameLen)
			} else {
				f.reset(MaxFrameLen)
			}
		}
		n, err := r.ReadFrames(slots[:k])
		n = min(max(n, 0), k)
		n = min(max(n, 0), len(slots))
		batch = batch[:0]
		for i, f := range slots[:n] {
			if len(f.Data) <= smallFrameLen && len(f.buf) > Headroom+smallFrameLen {
				// Keep the 64 KiB buffer for the next read and hand
				// on a right-sized copy.
				c := NewFrame(len(f.Data))
				copy(c.Data, f.Data)
				c.Hdr = f.Hdr
				batch = append(batch, c)
				continue
			}
			batch = append(batch, f)
			slots[i] = nil
		}
		if len(batch) > 0 {
			a.Input(batch)
		}
		switch {
		case n == k && k < len(slots):
			k *= 2
		case n < k/4 && k > minReadBatch:
			// Traffic slowed: give back the surplus 64 KiB buffers,
			// which an idle port would otherwise pin.
			k /= 2
			for i, f := range slots[k:] {
				if f != nil {
					f.DecRef()
					slots[k+i] = nil
				}
			}
		}
		switch {
		case err == nil && n > 0:
			failures = 0
		case errors.Is(err, net.ErrClosed) || a.detached.Load():
			return
		default:
			failures++
			if failures >= maxReadFailures {
				a.logger.Error("port stopped reading after repeated errors", "err", err)
				return
			}
			a.warn("reading from port", "err", err, "n", n)
		}
	}
}

// reset makes a frame whose buffer is being reused look like
// NewFrame(n) again: Data at the headroom, n bytes long, no offloads.
func (f *Frame) reset(n int) {
	f.Hdr = VnetHdr{}
	f.Data = f.buf[Headroom : Headroom+n]
}

// Input is step 2: it switches frames that entered through this port.
// It takes over the caller's reference to every frame, whether the frame
// is forwarded or dropped, and the caller must not touch them afterwards
// (the slice itself stays the caller's). It is safe for concurrent use;
// frames from one Input call reach any one destination in order. With
// PortConfig.Block set it may wait for room in a destination queue;
// otherwise it never blocks. Frames entering a detached port are dropped.
func (a *Attachment) Input(frames []*Frame) {
	if a.detached.Load() {
		for _, f := range frames {
			f.DecRef()
		}
		return
	}
	s := a.sw
	now := s.now()
	icc := s.icc.Load()
	var w wakes
	var bytes uint64
	for _, f := range frames {
		bytes += uint64(f.Len())
		if !a.check(f) {
			a.stats.dropMalformed.Add(1)
			f.DecRef()
			continue
		}
		if a.cfg.Bind != nil {
			f = f.contiguous()
			if v := a.cfg.Bind.admit(f.Data); v != verdictPass {
				if v == verdictMalformed {
					a.stats.dropMalformed.Add(1)
				} else {
					a.stats.dropSpoof.Add(1)
				}
				f.DecRef()
				continue
			}
		}
		s.fdb.learn(f.Src(), a, now)
		a.forward(f, now, icc, &w)
	}
	w.flush()
	a.stats.rxFrames.Add(uint64(len(frames)))
	a.stats.rxBytes.Add(bytes)
}

// check is step 3: it reports whether f can be switched at all. It reads
// only the headers, in place even in a scatter frame.
func (a *Attachment) check(f *Frame) bool {
	d, n := f.head(), f.Len()
	if len(d) < ethHdrLen || d[6]&1 != 0 {
		return false
	}
	h := f.Hdr
	if h.Flags&VnetFlagNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > n {
		return false
	}
	if h.IsGSO() {
		// Validate now, so that a super-frame no port could segment
		// is counted against the port that sent it.
		if _, err := parseTSO(d, n, h); err != nil {
			return false
		}
	}
	return true
}

// forward is step 6: it picks the destinations of f and hands it on.
func (a *Attachment) forward(f *Frame, now int64, icc bool, w *wakes) {
	dst := f.Dst()
	if !dst.IsMulticast() {
		if d := a.sw.fdb.lookup(dst, now); d != nil && !d.detached.Load() {
			switch {
			case d == a:
				// The destination sits behind the port the frame came
				// from: a switch filters it rather than hairpinning.
				f.DecRef()
			case !a.reaches(d, icc):
				a.stats.dropICC.Add(1)
				f.DecRef()
			default:
				a.enqueue(d, f, w)
			}
			return
		}
	}
	a.flood(f, icc, w)
}

// enqueue is step 7: it queues f, carrying one reference, on d.
func (a *Attachment) enqueue(d *Attachment, f *Frame, w *wakes) {
	if d.cfg.Direct {
		d.writeDirect(f)
		return
	}
	ok, wake := d.q.push(f, false)
	if !ok && a.cfg.Block {
		// Wake the writers this batch has fed before waiting, so
		// that none of them idles while this Input is stuck.
		w.flush()
		ok, wake = d.q.push(f, true)
	}
	if !ok {
		if !d.detached.Load() {
			d.stats.dropQueueFull.Add(1)
		}
		f.DecRef()
		return
	}
	if wake {
		w.add(d)
	}
}

// wakes collects the destinations whose writers one Input call must wake.
// Waking a writer once per batch instead of once per frame saves a
// futex wake per frame and lets the writer take the batch whole, so its
// WriteFrames call sees as many frames as the input had.
type wakes struct {
	n       int
	pending [8]*Attachment
}

func (w *wakes) add(d *Attachment) {
	for _, p := range w.pending[:w.n] {
		if p == d {
			return
		}
	}
	if w.n == len(w.pending) {
		d.q.wake()
		return
	}
	w.pending[w.n] = d
	w.n++
}

// flush wakes the writers collected so far.
func (w *wakes) flush() {
	for i, d := range w.pending[:w.n] {
		d.q.wake()
		w.pending[i] = nil
	}
	w.n = 0
}

// writeLoop is step 8: the port's writer goroutine, the only caller of
// its WriteFrames.
func (a *Attachment) writeLoop() {
	defer a.writerDone.Done()
	batch := make([]*Frame, 0, writeBatch)
	out := make([]*Frame, 0, writeBatch)
	for {
		var ok bool
		batch, ok = a.q.pop(batch[:0])
		if !ok {
			return
		}
		if a.cfg.Offloads {
			a.write(batch)
			continue
		}
		out = a.prepare(batch, out[:0])
		clear(batch)
		a.write(out)
	}
}

// prepare is step 9: it turns a batch for a port without offloads into
// frames that port can take, appending them to out. It consumes the
// references in batch.
func (a *Attachment) prepare(batch, out []*Frame) []*Frame {
	for _, f := range batch {
		f = f.contiguous()
		switch {
		case f.Hdr.IsGSO():
			var err error
			out, err = Segment(f, out)
			f.DecRef()
			if err != nil {
				a.stats.dropTxError.Add(1)
				a.warn("segmenting GSO frame", "err", err)
			}
		case f.Hdr.Flags&VnetFlagNeedsCsum != 0:
			if f.refs.Load() != 1 {
				// Another port holds this frame too: complete the
				// checksum in a private copy.
				c := f.clone()
				f.DecRef()
				f = c
			}
			if err := Checksum(f); err != nil {
				a.stats.dropTxError.Add(1)
				a.warn("completing checksum", "err", err)
				f.DecRef()
				continue
			}
			f.Hdr = VnetHdr{}
			out = append(out, f)
		default:
			out = append(out, f)
		}
	}
	return out
}

// writeDirect writes f to a Direct port on the caller's goroutine,
// taking ownership of f; it does what the writer goroutine does for a
// queued port, one frame at a time.
func (a *Attachment) writeDirect(f *Frame) {
	a.direct.RLock()
	defer a.direct.RUnlock()
	if a.detached.Load() {
		f.DecRef()
		return
	}
	one := oneFrame.Get().(*[1]*Frame)
	one[0] = f
	if a.cfg.Offloads {
		a.write(one[:])
	} else {
		a.write(a.prepare(one[:], nil))
		one[0] = nil
	}
	oneFrame.Put(one)
}

// oneFrame holds the one-element batches writeDirect hands to WriteFrames,
// so that forwarding to a Direct port allocates nothing.
var oneFrame = sync.Pool{New: func() any { return new([1]*Frame) }}

// clone returns a contiguous copy of f with one reference.
func (f *Frame) clone() *Frame {
	c := NewFrame(f.Len())
	if s := f.Slices(); s != nil {
		n := 0
		for _, b := range s {
			n += copy(c.Data[n:], b)
		}
	} else {
		copy(c.Data, f.Data)
	}
	c.Hdr = f.Hdr
	return c
}

// write is step 10: it hands frames to the port and releases them.
func (a *Attachment) write(frames []*Frame) {
	if len(frames) == 0 {
		return
	}
	var bytes uint64
	for i, f := range frames {
		if !a.scatter {
			f = f.contiguous()
			frames[i] = f
		}
		bytes += uint64(f.Len())
	}
	if err := a.port.WriteFrames(frames); err != nil {
		a.stats.dropTxError.Add(uint64(len(frames)))
		a.warn("writing to port", "err", err)
	} else {
		a.stats.txFrames.Add(uint64(len(frames)))
		a.stats.txBytes.Add(bytes)
	}
	for i, f := range frames {
		f.DecRef()
		frames[i] = nil
	}
}
