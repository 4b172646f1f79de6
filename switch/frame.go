package vswitch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// MAC is an Ethernet hardware address. The zero value is 00:00:00:00:00:00.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// IsMulticast reports whether m has the group bit set (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// String formats m as six colon-separated lower-case hex pairs.
func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// ParseMAC parses the colon-separated form that String prints.
func ParseMAC(s string) (MAC, error) {
	var m MAC
	if len(s) != 17 {
		return m, fmt.Errorf("invalid MAC address %q: want six hex pairs like 02:42:ac:11:00:02", s)
	}
	for i := range m {
		if i > 0 && s[3*i-1] != ':' {
			return m, fmt.Errorf("invalid MAC address %q: want six hex pairs like 02:42:ac:11:00:02", s)
		}
		var b byte
		for _, c := range []byte(s[3*i : 3*i+2]) {
			var v byte
			switch {
			case c >= '0' && c <= '9':
				v = c - '0'
			case c >= 'a' && c <= 'f':
				v = c - 'a' + 10
			case c >= 'A' && c <= 'F':
				v = c - 'A' + 10
			default:
				return m, fmt.Errorf("invalid MAC address %q: want six hex pairs like 02:42:ac:11:00:02", s)
			}
			b = b<<4 | v
		}
		m[i] = b
	}
	return m, nil
}

// Virtio-net header constants (include/uapi/linux/virtio_net.h).
const (
	// VnetHdrLen is the size of struct virtio_net_hdr as a TAP with
	// IFF_VNET_HDR reads and writes it (no num_buffers field).
	VnetHdrLen = 10

	// VnetFlagNeedsCsum: the checksum at CsumStart+CsumOffset holds only the
	// pseudo-header sum and must be completed over [CsumStart, end).
	VnetFlagNeedsCsum = 1
	// VnetFlagDataValid: the receiver may trust the checksums.
	VnetFlagDataValid = 2

	GSONone  = 0    // not a super-frame
	GSOTCPv4 = 1    // TSO over IPv4
	GSOUDP   = 3    // UFO (legacy)
	GSOTCPv6 = 4    // TSO over IPv6
	GSOUDPL4 = 5    // USO
	GSOECN   = 0x80 // flag: the segments carry ECN CWR
)

// VnetHdr is a decoded virtio_net_hdr: the offload metadata that travels
// with a frame through the switch so a TSO super-frame can cross from one
// TAP to another whole. The zero value describes an ordinary frame whose
// checksums are complete.
type VnetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // bytes of Ethernet+IP+TCP headers (a hint)
	GSOSize    uint16 // payload bytes per segment (the MSS)
	CsumStart  uint16 // offset from the Ethernet header where checksumming starts
	CsumOffset uint16 // offset from CsumStart where the checksum is stored
}

// ErrShortVnetHdr is returned by DecodeVnetHdr for fewer than VnetHdrLen bytes.
var ErrShortVnetHdr = errors.New("virtio-net header: short buffer")

// DecodeVnetHdr reads a virtio_net_hdr in the little-endian layout a TAP
// uses on the architectures Go supports here.
func DecodeVnetHdr(b []byte) (VnetHdr, error) {
	if len(b) < VnetHdrLen {
		return VnetHdr{}, ErrShortVnetHdr
	}
	return VnetHdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:]),
	}, nil
}

// Encode writes h into b[:VnetHdrLen]; b must be at least that long.
func (h VnetHdr) Encode(b []byte) {
	_ = b[VnetHdrLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
}

// IsGSO reports whether the frame is a super-frame that a port without
// offloads must receive segmented.
func (h VnetHdr) IsGSO() bool { return h.GSOType&^GSOECN != GSONone }

// Frame sizes and buffer layout.
const (
	// Headroom is reserved in front of every frame so that a virtio-net
	// header (10 bytes) or a VXLAN encapsulation (outer Ethernet, IPv4, UDP
	// and VXLAN headers: 50 bytes) can be prepended without a copy.
	Headroom = 64

	// MaxFrameLen is the largest frame a port may hand the switch: a 64 KiB
	// GSO super-frame plus its Ethernet header, or an MTU 65520 frame.
	MaxFrameLen = 65536 + 14

	smallFrameLen = 2048 - Headroom
)

// Frame is one Ethernet frame with its offload metadata, in a pooled
// buffer. Frames are reference counted: NewFrame returns a frame holding
// one reference; whoever hands a frame on hands on its reference, and
// flooding takes one more reference per extra destination with IncRef.
// When the last reference is dropped with DecRef the buffer returns to
// its pool, so a Frame must not be touched after its owner's DecRef.
//
// A frame is either contiguous, the usual case, with its bytes in Data,
// or a scatter frame (NewScatterFrame) whose bytes stay in memory that an
// Owner holds, such as a netstack packet's views, so that netstack's
// segments reach a TAP with one writev and no copy. A scatter frame has
// nil Data; the switch copies it into a contiguous frame wherever bytes
// beyond its headers are needed (software segmentation, policy checks,
// ports that do not implement ScatterPort).
type Frame struct {
	// Hdr is the offload metadata. The zero value means "complete frame".
	Hdr VnetHdr
	// Data is the Ethernet frame, starting at the destination MAC. It is a
	// window into the frame's buffer with Headroom bytes available before it
	// (see Prepend). Ports may reslice Data within its capacity. It is nil
	// in a scatter frame.
	Data []byte

	buf  []byte
	refs atomic.Int32

	// Scatter frames only: the frame's bytes in order (the first slice
	// holds at least the Ethernet header), their total length, and the
	// owner whose reference keeps them valid.
	ext    [][]byte
	extLen int
	owner  Owner
}

// Owner keeps the memory behind a scatter frame's slices valid until its
// DecRef, which the switch calls exactly once, when the frame's last
// reference is dropped, possibly on another goroutine than the one that
// made the frame.
type Owner interface {
	DecRef()
}

// ScatterPort is implemented by ports whose WriteFrames accepts scatter
// frames (Frame.Slices not nil) as they are. The switch hands any other
// port a contiguous copy instead.
type ScatterPort interface {
	Port
	// AcceptsScatter marks the implementation; the switch never calls it.
	AcceptsScatter()
}

var (
	smallPool   = sync.Pool{New: func() any { return &Frame{buf: make([]byte, Headroom+smallFrameLen)} }}
	largePool   = sync.Pool{New: func() any { return &Frame{buf: make([]byte, Headroom+MaxFrameLen)} }}
	scatterPool = sync.Pool{New: func() any { return new(Frame) }}
)

// NewScatterFrame returns an empty scatter frame with one reference. It
// takes over one reference to owner, dropped when the frame's last
// reference is. The maker adds the frame's bytes with AppendSlice before
// handing the frame on; they must not change while owner is referenced.
// Frame length limits are those of NewFrame. owner must not be nil.
func NewScatterFrame(owner Owner) *Frame {
	if owner == nil {
		panic("vswitch: NewScatterFrame without an owner")
	}
	f := scatterPool.Get().(*Frame)
	f.Hdr = VnetHdr{}
	f.owner = owner
	f.refs.Store(1)
	return f
}

// AppendSlice adds b to the end of a scatter frame's bytes. The first
// slice must hold the whole Ethernet header and should hold every header
// up to the transport payload, which the switch reads in place.
func (f *Frame) AppendSlice(b []byte) {
	f.ext = append(f.ext, b)
	f.extLen += len(b)
}

// Slices returns a scatter frame's bytes, in order, or nil for a
// contiguous frame (use Data). The slices belong to the frame's owner:
// read them only while holding a reference to the frame.
func (f *Frame) Slices() [][]byte {
	if f.owner == nil {
		return nil
	}
	return f.ext
}

// Len returns the frame's length in bytes, contiguous or scatter.
func (f *Frame) Len() int {
	if f.owner != nil {
		return f.extLen
	}
	return len(f.Data)
}

// head returns the frame's first contiguous bytes: Data, or the first
// slice of a scatter frame, where its headers are.
func (f *Frame) head() []byte {
	if f.owner != nil {
		if len(f.ext) == 0 {
			return nil
		}
		return f.ext[0]
	}
	return f.Data
}

// contiguous returns f itself if it is contiguous, or else a contiguous
// copy with one reference, dropping the caller's reference to f.
func (f *Frame) contiguous() *Frame {
	if f.owner == nil {
		return f
	}
	c := f.clone()
	f.DecRef()
	return c
}

// NewFrame returns a frame from the pools with len(Data) == n and one
// reference. Frames up to about 2 KiB come from a small-buffer pool so
// that queued MTU-sized frames do not each pin 64 KiB. n must not exceed
// MaxFrameLen.
func NewFrame(n int) *Frame {
	var f *Frame
	if n <= smallFrameLen {
		f = smallPool.Get().(*Frame)
	} else {
		if n > MaxFrameLen {
			panic(fmt.Sprintf("vswitch: frame of %d bytes exceeds MaxFrameLen", n))
		}
		f = largePool.Get().(*Frame)
	}
	f.Hdr = VnetHdr{}
	f.Data = f.buf[Headroom : Headroom+n]
	f.refs.Store(1)
	return f
}

// Cap, Resize and Prepend apply to contiguous frames only.

// Cap returns the largest len(Data) this frame can hold without
// reallocating, counted from the start of Data.
func (f *Frame) Cap() int { return cap(f.Data) }

// Resize sets len(Data) to n, keeping its start. n must not exceed Cap.
func (f *Frame) Resize(n int) { f.Data = f.Data[:n] }

// Prepend extends Data by n bytes at the front, taken from the headroom,
// and returns the new prefix. It panics if less than n bytes remain.
func (f *Frame) Prepend(n int) []byte {
	off := len(f.buf) - cap(f.Data) // start of Data within buf
	if off < n {
		panic("vswitch: Prepend beyond headroom")
	}
	f.Data = f.buf[off-n : off+len(f.Data)]
	return f.Data[:n]
}

// IncRef adds a reference, for a frame about to be queued to one more
// destination.
func (f *Frame) IncRef() { f.refs.Add(1) }

// DecRef drops a reference and recycles the buffer when it was the last.
func (f *Frame) DecRef() {
	switch n := f.refs.Add(-1); {
	case n > 0:
		return
	case n < 0:
		panic("vswitch: Frame.DecRef without a reference")
	}
	f.Data = nil
	if o := f.owner; o != nil {
		clear(f.ext)
		f.ext, f.extLen, f.owner = f.ext[:0], 0, nil
		o.DecRef()
		scatterPool.Put(f)
		return
	}
	if len(f.buf) == Headroom+smallFrameLen {
		smallPool.Put(f)
	} else {
		largePool.Put(f)
	}
}

// Dst returns the destination MAC; the frame must hold at least 14 bytes.
func (f *Frame) Dst() MAC { return MAC(f.head()[0:6]) }

// Src returns the source MAC; the frame must hold at least 14 bytes.
func (f *Frame) Src() MAC { return MAC(f.head()[6:12]) }
