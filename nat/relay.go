package nat

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
)

// The relay joins two stream connections, one from the guest side (a gonet
// connection from the gateway, or a direct socket inside a sandbox,
// direct.go) and one from the host side (a kernel socket). It is the only
// copy loop in the package: outbound NAT and published ports both use it.
//
//  1. Two copy loops run, one per direction; the caller's goroutine runs one
//     of them, so a relay costs one extra goroutine, taken from the
//     reused workers (workers.go).
//  2. Between a direct socket and the client's (a direct published port)
//     each loop is splice(2) through a pipe (splice_linux.go): the bytes
//     never enter our memory.
//  3. From a guest connection to a host TCP socket the guest side copies
//     by itself (the gateway's connections implement io.WriterTo): bytes
//     go straight from netstack's buffers into the kernel, one copy per
//     byte instead of two through a buffer of ours (NETSTACK.md R3;
//     stack/tcpconn.go says why the other direction does not). Every
//     other loop goes through a buffer that starts at 32 KiB and, once the
//     loop has moved relayGrowAfter bytes, grows to 256 KiB: bulk
//     transfers get large buffers (fewer syscalls and netstack passes per
//     byte), short request/response flows stay cheap. Both sizes come from
//     process-wide pools shared by every network.
//  4. A loop that reads EOF half-closes the other side (CloseWrite) and
//     stops; the other direction keeps going, so a guest that shuts down
//     its sending side still receives the answer.
//  5. A loop that fails (reset, write error) closes both connections, which
//     ends the other loop at once; a host socket is closed with a reset so
//     the peer does not mistake the truncated stream for a complete one.
//  6. When both loops are done both connections are closed.

const (
	relaySmallBuf  = 32 << 10
	relayLargeBuf  = 256 << 10
	relayGrowAfter = 1 << 20
)

// Pools hold *[]byte so that Put does not allocate.
var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, relaySmallBuf); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, relayLargeBuf); return &b }}
)

// closeWriter is implemented by *net.TCPConn, gVisor's gonet.TCPConn and
// stack.TCPConn.
type closeWriter interface {
	CloseWrite() error
}

// lingerer is implemented by *net.TCPConn and *directConn: SetLinger(0)
// makes Close send a reset.
type lingerer interface {
	SetLinger(sec int) error
}

// relayResult reports what a relay moved; errors are the first error that
// was not a clean end of stream in each direction, nil otherwise.
type relayResult struct {
	AToB, BToA       int64
	AToBErr, BToAErr error
}

// relay copies a->b and b->a until both directions have ended, then closes
// both connections. It blocks until then. Half-closes are propagated when
// the connections implement CloseWrite; otherwise EOF closes the other
// connection entirely.
func relay(a, b net.Conn) relayResult {
	var res relayResult
	var wg sync.WaitGroup
	wg.Add(1)
	workers.goFn(func() {
		defer wg.Done()
		res.BToA, res.BToAErr = relayHalf(a, b)
	})
	res.AToB, res.AToBErr = relayHalf(b, a)
	wg.Wait()
	a.Close()
	b.Close()
	return res
}

// relayHalf copies src to dst and then either half-closes dst (clean EOF)
// or closes both (error). It returns the bytes copied and the error, nil
// for a clean EOF.
func relayHalf(dst, src net.Conn) (int64, error) {
	n, err := copyConn(dst, src)
	if err == nil {
		if cw, ok := dst.(closeWriter); ok {
			if cerr := cw.CloseWrite(); cerr == nil {
				return n, nil
			}
		}
		// No way to pass the half-close on: ending the connection is the
		// closest the other side can see.
		dst.Close()
		return n, nil
	}
	if !isClosed(err) {
		// src failed on its own (typically a reset): pass the abort on
		// as a reset where the socket allows it, rather than a FIN that
		// would make a truncated stream look complete.
		for _, c := range []net.Conn{dst, src} {
			if l, ok := c.(lingerer); ok {
				l.SetLinger(0)
			}
		}
	}
	dst.Close()
	src.Close()
	if isClosed(err) {
		// The other direction failed first and closed us; its error is
		// the one worth reporting.
		err = nil
	}
	return n, err
}

// copyConn is steps 2 and 3. A direct socket and a host socket are
// spliced. Otherwise the guest side is told apart from the host side as the connection that is
// not a *net.TCPConn, since a *net.TCPConn is an io.WriterTo too (splice,
// or a generic 32 KiB copy). An io.ReaderFrom on a gateway connection is
// not used: the host's would pick its generic copy, and the guest side
// has none worth taking (stack/tcpconn.go). A host source is read with
// raw reads (hostIO).
func copyConn(dst, src net.Conn) (int64, error) {
	_, dstHost := dst.(*net.TCPConn)
	srcHost, _ := src.(*net.TCPConn)
	_, dstDirect := dst.(*directConn)
	_, srcDirect := src.(*directConn)
	if (dstHost && srcDirect) || (dstDirect && srcHost != nil) {
		return spliceCopy(dst.(syscall.Conn), src.(syscall.Conn))
	}
	if wt, ok := src.(io.WriterTo); ok && dstHost && srcHost == nil {
		return wt.WriteTo(dst)
	}
	if srcHost != nil {
		if r, err := newHostIO(srcHost, true); err == nil {
			return copyGrowing(dst, r)
		}
	}
	return copyGrowing(dst, src)
}

// copyGrowing is io.CopyBuffer with a buffer that grows from 32 KiB to
// 256 KiB after relayGrowAfter bytes. The writer and reader are wrapped in
// anonymous structs so that ReaderFrom/WriterTo implementations (which
// would allocate their own 32 KiB buffer or pick a slower path) cannot
// bypass our buffer.
func copyGrowing(dst io.Writer, src io.Reader) (int64, error) {
	w := struct{ io.Writer }{dst}
	small := smallBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(w, &io.LimitedReader{R: src, N: relayGrowAfter}, *small)
	smallBufs.Put(small)
	if err != nil || n < relayGrowAfter {
		return n, err
	}
	large := largeBufs.Get().(*[]byte)
	m, err := io.CopyBuffer(w, struct{ io.Reader }{src}, *large)
	largeBufs.Put(large)
	return n + m, err
}

// isClosed reports whether err comes from using a connection this package
// closed itself, which is how relays and flows are told to stop.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}
