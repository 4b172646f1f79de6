package vswitch

import "net/netip"

// Port is the device side of one switch port: a TAP, the gateway's
// netstack NIC, a VM socket, an in-memory pipe in tests.
//
// The switch calls WriteFrames only from the port's own writer goroutine,
// so calls never overlap. The frames (and their Data) belong to the switch:
// the port must not keep them after WriteFrames returns, and the switch
// drops its references afterwards. A port attached without Offloads never
// receives a GSO super-frame or a frame with VnetFlagNeedsCsum: the switch
// segments and checksums those in software first. Only a port that
// implements ScatterPort receives scatter frames (Frame.Slices); every
// other port gets contiguous frames with their bytes in Data.
//
// Close is called once by Detach after the writer goroutine has stopped;
// it must also unblock a ReadFrames in progress.
type Port interface {
	WriteFrames(frames []*Frame) error
	Close() error
}

// Reader is implemented by ports that the switch should pull frames from
// (a TAP, a socket). For each such port the switch runs one reader
// goroutine that calls ReadFrames and switches what it returns.
//
// ReadFrames fills frames[0:n] from the device and returns n. The switch
// passes frames from NewFrame(MaxFrameLen) with one reference; the port sets
// Data's length and Hdr of the frames it fills and may replace a slot with
// a different frame it owns (for example a smaller copy, to keep queued
// memory proportional to the traffic), in which case it must DecRef the one
// it replaced. It blocks until at least one frame is read. It returns
// net.ErrClosed (or an error wrapping it) once Close has been called: the
// reader goroutine's clean exit.
//
// Ports that are fed from elsewhere (the netstack NIC is driven by
// gVisor's goroutines) do not implement Reader and call Attachment.Input
// instead.
type Reader interface {
	ReadFrames(frames []*Frame) (n int, err error)
}

// PortConfig says how the switch treats a port.
type PortConfig struct {
	// Name identifies the port in counters and logs (e.g. "tap:web", "gateway").
	Name string

	// Offloads reports whether the port takes GSO super-frames and
	// partially checksummed frames as they are (a vnet-header TAP, netstack).
	Offloads bool

	// QueueLen bounds the port's transmit queue in frames; 0 means 1024.
	QueueLen int

	// Block makes Input wait for room in a full destination queue instead
	// of dropping. Set for the netstack port so gVisor feels backpressure
	// (its TCP slows down) rather than losing segments; never for a port fed
	// by a guest, which would let one guest stall the switch.
	Block bool

	// Direct makes the switch call WriteFrames synchronously on the
	// goroutine that forwards a frame to the port (the Input caller, such
	// as another port's reader), with no transmit queue and no writer
	// goroutine; QueueLen is then unused. The port's WriteFrames must be
	// safe for concurrent use and must not block for long, and it must not
	// forward back into itself. Set it for the netstack port, whose
	// WriteFrames only hands packets to gVisor: it saves a goroutine
	// wake-up and hop per frame from a guest to the gateway, which is most
	// of the per-packet latency the switch adds (NETSTACK.md R7).
	Direct bool

	// Gateway marks the port every endpoint may reach even with ICC off.
	Gateway bool

	// Bind, if set, enables anti-spoofing on frames entering from this port.
	Bind *Binding
}

// Binding is the identity a guest port is allowed to use. Frames whose
// source MAC is not MAC, ARP frames whose sender hardware address is not
// MAC, and ARP or IPv4 frames whose sender or source address is not IPv4,
// are dropped and counted (DropSpoof). VLAN-tagged frames are dropped too,
// since the tag would hide their payload from the check. The zero IPv4
// skips the address check but still binds the MAC (a DHCP client before
// its lease; 0.0.0.0 sources, as DHCP DISCOVER and ARP probes use, are
// always allowed). IPv6 sources are not bound: only the MAC is checked.
type Binding struct {
	MAC  MAC
	IPv4 netip.Addr
}

// PortStats are a port's counters since it was attached. Rx is what the
// port handed the switch; Tx is what the switch wrote to the port.
type PortStats struct {
	RxFrames, RxBytes uint64
	TxFrames, TxBytes uint64

	DropQueueFull uint64 // egress queue full: frame dropped, as a real switch would
	DropSpoof     uint64 // ingress failed the Binding check
	DropICC       uint64 // ingress destined to another endpoint with ICC off
	DropMalformed uint64 // ingress too short or otherwise unswitchable
	DropTxError   uint64 // WriteFrames returned an error
}
