package vswitch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
)

// PipeLen is how many frames each direction of a pipe holds before
// WriteFrames drops (and counts) the excess, as a TAP's transmit queue does.
const PipeLen = 1024

var (
	_ Port   = (*PipePort)(nil)
	_ Reader = (*PipePort)(nil)
)

// errPipeOffload is returned by WriteFrames of a pipe made without
// offloads when it is handed a frame that needs them: the switch broke
// the Port contract.
var errPipeOffload = errors.New("pipe: offload frame written to a port without offloads")

// pipe is the state two PipePorts share: one queue per direction.
type pipe struct {
	mu      sync.Mutex
	cond    sync.Cond   // broadcast when a queue gains a frame or the pipe closes
	q       [2][]*Frame // q[i] holds frames written to end 1-i, read by end i
	dropped [2]uint64   // frames written by end i dropped because q[1-i] was full
	closed  bool
}

// PipePort is one end of an in-memory Ethernet link made by NewPipe:
// frames written to one end are read from the other, in order, with their
// Hdr. It implements Port and Reader, so one end can be attached to a
// switch while a test (or another package's test) drives the other end
// directly with Send and Receive, or attaches it elsewhere.
//
// Each direction holds up to PipeLen frames; WriteFrames drops what does
// not fit and counts it (see Dropped), so a writer never blocks. Closing
// either end closes both: blocked readers return net.ErrClosed and queued
// frames are released. All methods are safe for concurrent use.
type PipePort struct {
	p        *pipe
	end      int // 0 or 1
	offloads bool
}

// NewPipe returns the two ends of a new in-memory link. offloads says
// whether the ends accept GSO super-frames and partially checksummed
// frames (see Offloads): a pipe made without them rejects such frames
// from WriteFrames, which makes tests catch a switch that forgot to
// segment.
func NewPipe(offloads bool) (a, b *PipePort) {
	p := &pipe{}
	p.cond.L = &p.mu
	return &PipePort{p: p, end: 0, offloads: offloads}, &PipePort{p: p, end: 1, offloads: offloads}
}

// Offloads reports whether the pipe was made with offloads; attach it
// with PortConfig{Offloads: p.Offloads()}.
func (e *PipePort) Offloads() bool { return e.offloads }

// WriteFrames copies frames to the other end; the caller keeps its
// references. Frames beyond the other end's free room are dropped and
// counted. It returns net.ErrClosed after Close, and an error (writing
// nothing) if the pipe has no offloads and a frame needs them.
func (e *PipePort) WriteFrames(frames []*Frame) error {
	if !e.offloads {
		for _, f := range frames {
			if f.Hdr.IsGSO() || f.Hdr.Flags&VnetFlagNeedsCsum != 0 {
				return fmt.Errorf("%w: GSO type %#x flags %#x", errPipeOffload, f.Hdr.GSOType, f.Hdr.Flags)
			}
		}
	}
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return net.ErrClosed
	}
	peer := 1 - e.end
	for _, f := range frames {
		if len(p.q[peer]) >= PipeLen {
			p.dropped[e.end]++
			continue
		}
		p.q[peer] = append(p.q[peer], f.clone())
	}
	p.cond.Broadcast()
	return nil
}

// ReadFrames waits for frames written to the other end and fills
// frames[0:n] with them, copying into the frames supplied when they are
// large enough and otherwise replacing the slot (releasing the supplied
// frame, as the Reader contract allows; a nil slot is filled too). It
// returns net.ErrClosed once the pipe is closed.
func (e *PipePort) ReadFrames(frames []*Frame) (int, error) {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	q := &p.q[e.end]
	for len(*q) == 0 && !p.closed {
		p.cond.Wait()
	}
	if p.closed {
		return 0, net.ErrClosed
	}
	n := min(len(frames), len(*q))
	for i, f := range (*q)[:n] {
		switch dst := frames[i]; {
		case dst == nil:
			frames[i] = f
		case dst.Cap() >= len(f.Data):
			dst.Resize(len(f.Data))
			copy(dst.Data, f.Data)
			dst.Hdr = f.Hdr
			f.DecRef()
		default:
			dst.DecRef()
			frames[i] = f
		}
	}
	rest := copy(*q, (*q)[n:])
	clear((*q)[rest:])
	*q = (*q)[:rest]
	return n, nil
}

// Close closes both ends of the pipe and releases the queued frames. It
// always returns nil.
func (e *PipePort) Close() error {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	for i := range p.q {
		for _, f := range p.q[i] {
			f.DecRef()
		}
		p.q[i] = nil
	}
	p.cond.Broadcast()
	return nil
}

// Dropped returns how many frames written to this end were dropped
// because the other end's queue was full.
func (e *PipePort) Dropped() uint64 {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	return e.p.dropped[e.end]
}

// Send writes a copy of data, with offload header hdr, to the other end:
// the way a test injects a frame. data must be at most MaxFrameLen bytes.
func (e *PipePort) Send(hdr VnetHdr, data []byte) error {
	if len(data) > MaxFrameLen {
		return fmt.Errorf("pipe: send: frame of %d bytes exceeds MaxFrameLen", len(data))
	}
	f := NewFrame(len(data))
	copy(f.Data, data)
	f.Hdr = hdr
	err := e.WriteFrames([]*Frame{f})
	f.DecRef()
	if err != nil {
		return fmt.Errorf("pipe: send: %w", err)
	}
	return nil
}

// Receive waits for the next frame written to the other end and returns
// its header and a copy of its bytes. It returns ctx's error if ctx ends
// first, and net.ErrClosed once the pipe is closed.
func (e *PipePort) Receive(ctx context.Context) (VnetHdr, []byte, error) {
	p := e.p
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop()

	p.mu.Lock()
	defer p.mu.Unlock()
	q := &p.q[e.end]
	for len(*q) == 0 && !p.closed && ctx.Err() == nil {
		p.cond.Wait()
	}
	switch {
	case p.closed:
		return VnetHdr{}, nil, net.ErrClosed
	case len(*q) == 0:
		return VnetHdr{}, nil, fmt.Errorf("pipe: receive: %w", ctx.Err())
	}
	f := (*q)[0]
	rest := copy(*q, (*q)[1:])
	(*q)[rest] = nil
	*q = (*q)[:rest]
	data := append([]byte(nil), f.Data...)
	hdr := f.Hdr
	f.DecRef()
	return hdr, data, nil
}
