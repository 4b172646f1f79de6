package stack

// TAP devices as switch ports.
//
// A TAP is opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR through
// golang.org/x/sys/unix rather than songgao/water: water can neither set
// IFF_VNET_HDR nor wrap a TAP fd received over SCM_RIGHTS, and without the
// virtio-net header every TCP segment costs a syscall and a netstack pass
// (NETSTACK.md R1, R5). water would only serve a plain TAP on another OS,
// which usernet does not target, so it is not used here at all.
//
// Frame flow through a TAP port:
//  1. ReadFrames: one read(2) per frame into the switch's frame, the 10-byte
//     virtio-net header landing in the frame's headroom; more frames are
//     read while the fd has them, up to len(frames). (The switch's reader
//     goroutine copies small frames out of the 64 KiB buffers, so the TAP
//     does not.)
//  2. WriteFrames: one writev(2) per frame, header from a per-port scratch
//     buffer, frame data in place.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	vswitch "github.com/usernet/usernet/switch"
)

// Offload flags for TUNSETOFFLOAD (include/uapi/linux/if_tun.h); x/sys/unix
// does not define them.
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
)

// CreateTAP creates a TAP interface called name in the calling thread's
// network namespace with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, sets its
// virtio-net header size to 10 bytes and, when mtu > 0, its MTU. It returns
// the non-blocking TAP file; the caller owns it. The sandbox agent calls
// this inside the sandbox to make eth0 and sends the fd to the daemon over
// SCM_RIGHTS, where NewTAP takes it over. The interface disappears when the
// last fd referring to it is closed.
func CreateTAP(name string, mtu int) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	if err := configureTAP(fd, name, mtu); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

func configureTAP(fd int, name string, mtu int) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vswitch.VnetHdrLen); err != nil {
		return fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	if mtu > 0 {
		if err := setMTU(ifr.Name(), mtu); err != nil {
			return err
		}
	}
	return nil
}

// setMTU sets an interface's MTU with SIOCSIFMTU on a throwaway socket.
func setMTU(name string, mtu int) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("set mtu: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("set mtu: %w", err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(s, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("set mtu %d: %w", mtu, err)
	}
	return nil
}

// TAP is a TAP device attached to the switch as a port. It implements
// vswitch.Port and vswitch.Reader. With a virtio-net header (the TAP was
// created with IFF_VNET_HDR) frames keep their offload metadata and TSO
// super-frames of up to 64 KiB pass whole; attach such a TAP with
// PortConfig.Offloads = Offloads(). Without one it carries plain frames and
// the switch segments GSO frames for it.
//
// The switch calls ReadFrames from one goroutine; it must not be called
// concurrently with itself. WriteFrames is safe for concurrent use, so the
// TAP may be attached as a Direct port. Close may be called from any
// goroutine and unblocks both.
type TAP struct {
	f      *os.File
	name   string
	vnet   bool
	logger *slog.Logger
	closed atomic.Bool

	// rc reaches the fd through Go's netpoller. readFn is t.readReady,
	// bound once.
	rc     syscall.RawConn
	readFn func(uintptr) bool

	// Used only by ReadFrames (one caller at a time).
	rd readState

	// dropShort counts reads too short to hold a header and an Ethernet
	// header; the kernel should never produce them.
	dropShort atomic.Uint64
}

var (
	_ vswitch.Port   = (*TAP)(nil)
	_ vswitch.Reader = (*TAP)(nil)
)

// NewTAP takes ownership of f, an open TAP fd (from CreateTAP, possibly
// received over SCM_RIGHTS), checks with TUNGETIFF that it is a TAP (not a
// TUN), and records whether it carries virtio-net headers. For a vnet TAP
// it enables checksum and TSO offloads (TUNSETOFFLOAD), so the kernel may
// hand us partially checksummed TSO super-frames. The fd is switched to
// non-blocking mode and served by Go's netpoller, so Close unblocks a
// pending read. f is closed on error.
func NewTAP(f *os.File, logger *slog.Logger) (*TAP, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Dup the descriptor rather than using f.Fd(): Fd would put f into
	// blocking mode, and a fresh os.File of a non-blocking fd is registered
	// with the netpoller.
	var (
		fd     = -1
		dupErr error
	)
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Control(func(raw uintptr) {
			fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
		})
	}
	f.Close()
	if err == nil {
		err = dupErr
	}
	if err != nil {
		return nil, fmt.Errorf("tap: dup fd: %w", err)
	}
	name, vnet, err := checkTAP(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	logger.Debug("tap opened", "name", name, "vnet", vnet)
	return wrapTAP(fd, name, vnet, logger), nil
}

// wrapTAP makes a TAP of a checked, non-blocking fd; it takes ownership
// of fd. (Tests wrap a SOCK_SEQPACKET socket, which keeps frame
// boundaries as a TAP does.)
func wrapTAP(fd int, name string, vnet bool, logger *slog.Logger) *TAP {
	t := &TAP{
		f:      os.NewFile(uintptr(fd), "tap:"+name),
		name:   name,
		vnet:   vnet,
		logger: logger,
	}
	// SyscallConn of an open *os.File cannot fail.
	t.rc, _ = t.f.SyscallConn()
	t.readFn = t.readReady
	return t
}

// checkTAP validates a TAP fd, enables offloads on a vnet TAP and makes
// the fd non-blocking; it reports the interface name and whether the TAP
// carries virtio-net headers.
func checkTAP(fd int) (name string, vnet bool, err error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", false, fmt.Errorf("tap: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return "", false, fmt.Errorf("tap: TUNGETIFF: %w", err)
	}
	flags := ifr.Uint16()
	name = ifr.Name()
	if flags&unix.IFF_TAP == 0 {
		return "", false, fmt.Errorf("tap: %s is a TUN device (flags %#x), want a TAP", name, flags)
	}
	vnet = flags&unix.IFF_VNET_HDR != 0
	if vnet {
		// Whoever created the TAP should have set this; setting it again is
		// harmless and makes a TAP from another creator safe to use.
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vswitch.VnetHdrLen); err != nil {
			return "", false, fmt.Errorf("tap %s: TUNSETVNETHDRSZ: %w", name, err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunFCsum|tunFTSO4|tunFTSO6); err != nil {
			return "", false, fmt.Errorf("tap %s: TUNSETOFFLOAD: %w", name, err)
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return "", false, fmt.Errorf("tap %s: set non-blocking: %w", name, err)
	}
	return name, vnet, nil
}

// Offloads reports whether the TAP carries virtio-net headers, and so
// takes GSO super-frames and partial checksums (PortConfig.Offloads).
func (t *TAP) Offloads() bool { return t.vnet }

// Name returns the interface name the kernel reported (e.g. "eth0").
func (t *TAP) Name() string { return t.name }

// ReadFrames reads at least one frame, and then as many more as the device
// has ready, up to len(frames). See vswitch.Reader for the ownership rules.
// It returns an error wrapping net.ErrClosed after Close.
func (t *TAP) ReadFrames(frames []*vswitch.Frame) (int, error) {
	t.rd = readState{frames: frames}
	err := t.rc.Read(t.readFn)
	n, readErr := t.rd.n, t.rd.err
	t.rd = readState{}
	if n > 0 {
		return n, nil
	}
	if err == nil {
		err = readErr
	}
	return 0, t.readErr(err)
}

// readState is the state of one ReadFrames call, kept in the TAP so that
// the callback handed to the poller is built once (no allocation per call).
type readState struct {
	frames []*vswitch.Frame
	n      int
	err    error
}

// readReady is the poller callback: it reports false to wait for the fd
// to become readable, which it does only while it has nothing to return.
func (t *TAP) readReady(fd uintptr) bool {
	rd := &t.rd
	for rd.n < len(rd.frames) {
		ok, err := t.readFrame(int(fd), &rd.frames[rd.n])
		if err == unix.EAGAIN {
			return rd.n > 0
		}
		if err != nil {
			rd.err = err
			return true
		}
		if ok {
			rd.n++
		}
	}
	return true
}

// readFrame reads one frame into *slot; it reports false for a read too
// short to keep, which is counted and dropped.
func (t *TAP) readFrame(fd int, slot **vswitch.Frame) (bool, error) {
	f := *slot
	if f == nil || f.Cap() < vswitch.MaxFrameLen {
		// A short buffer would make the kernel truncate a super-frame.
		if f != nil {
			f.DecRef()
		}
		f = vswitch.NewFrame(vswitch.MaxFrameLen)
		*slot = f
	}
	f.Resize(f.Cap())
	hl := 0
	if t.vnet {
		hl = vswitch.VnetHdrLen
		f.Prepend(hl)
	}
	n, err := rawRead(fd, f.Data)
	if err != nil {
		if hl > 0 {
			f.Data = f.Data[hl:]
		}
		return false, err
	}
	var hdr vswitch.VnetHdr
	if hl > 0 {
		hdr, _ = vswitch.DecodeVnetHdr(f.Data)
		f.Data = f.Data[hl:]
	}
	n -= hl
	if n < 14 {
		t.dropShort.Add(1)
		return false, nil
	}
	f.Resize(n)
	f.Hdr = hdr
	return true, nil
}

func (t *TAP) readErr(err error) error {
	if t.closed.Load() {
		return fmt.Errorf("tap %s: read: %w", t.name, net.ErrClosed)
	}
	return fmt.Errorf("tap %s: read: %w", t.name, err)
}

// AcceptsScatter implements vswitch.ScatterPort: writeFrame gathers a
// scatter frame's slices into its writev.
func (*TAP) AcceptsScatter() {}

// WriteFrames writes each frame to the device with one writev, prefixed by
// its virtio-net header on a vnet TAP. Frames are not modified: a flooded
// frame is shared with other ports' writers, so the header is written from
// a scratch buffer rather than prepended into the frame's headroom. A frame
// the kernel refuses (for example EIO while the interface is down) does not
// stop the batch; the first error is returned.
func (t *TAP) WriteFrames(frames []*vswitch.Frame) error {
	w := writers.Get().(*writeState)
	defer writers.Put(w)
	w.t = t
	defer func() { w.t, w.frame = nil, nil }()
	var first error
	for _, f := range frames {
		if f.Len() == 0 {
			continue
		}
		w.frame, w.err = f, nil
		err := t.rc.Write(w.fn)
		if err == nil {
			err = w.err
		}
		if err != nil {
			if t.closed.Load() {
				return t.writeErr(err)
			}
			if first == nil {
				first = t.writeErr(err)
			}
		}
	}
	return first
}

// writeState is the state of one WriteFrames call: the frame being
// written, its result, and the header and iovec scratch the syscall
// reads. Calls take one from writers, so concurrent writers never share
// one and writing allocates nothing.
type writeState struct {
	t     *TAP
	frame *vswitch.Frame
	err   error
	hdr   [vswitch.VnetHdrLen]byte
	iov   []unix.Iovec       // grown to the most slices a frame has had
	fn    func(uintptr) bool // w.ready, bound once
}

var writers = sync.Pool{New: func() any {
	w := new(writeState)
	w.fn = w.ready
	return w
}}

// ready is the poller callback for writes: it waits only on EAGAIN.
func (w *writeState) ready(fd uintptr) bool {
	w.err = w.t.writeFrame(int(fd), w)
	return w.err != unix.EAGAIN
}

func (t *TAP) writeFrame(fd int, w *writeState) error {
	f := w.frame
	iov := w.iov[:0]
	if t.vnet {
		f.Hdr.Encode(w.hdr[:])
		iov = appendIovec(iov, w.hdr[:])
	}
	if s := f.Slices(); s != nil {
		for _, b := range s {
			if len(b) > 0 {
				iov = appendIovec(iov, b)
			}
		}
	} else {
		iov = appendIovec(iov, f.Data)
	}
	w.iov = iov
	_, err := rawWritev(fd, iov)
	clear(iov) // do not pin the frame's memory from the pool
	return err
}

func (t *TAP) writeErr(err error) error {
	if t.closed.Load() {
		return fmt.Errorf("tap %s: write: %w", t.name, net.ErrClosed)
	}
	return fmt.Errorf("tap %s: write: %w", t.name, err)
}

// Close closes the device, unblocking a ReadFrames or WriteFrames in
// progress; they then return errors wrapping net.ErrClosed. Closing the
// last fd of a non-persistent TAP removes the interface.
func (t *TAP) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	if err := t.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("tap %s: close: %w", t.name, err)
	}
	return nil
}

// DroppedShort returns how many reads were too short to be a frame.
func (t *TAP) DroppedShort() uint64 { return t.dropShort.Load() }
