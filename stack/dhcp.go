package stack

// The DHCPv4 message codec (RFC 2131, 2132). Decoding reads guest bytes
// and is fuzzed (FuzzDHCP). Options that appear more than once are
// concatenated on decode and long options are split on encode (RFC 3396),
// so a message with unique option codes survives a round trip.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	vswitch "github.com/usernet/usernet/switch"
)

// DHCP message operations, hardware type and ports.
const (
	dhcpBootRequest = 1
	dhcpBootReply   = 2
	dhcpHTypeEther  = 1

	dhcpServerPort = 67
	dhcpClientPort = 68

	// dhcpFixedLen is the fixed BOOTP part before the magic cookie.
	dhcpFixedLen = 236
	// dhcpMinLen is the smallest message some BOOTP clients accept; replies
	// are padded to it.
	dhcpMinLen = 300

	dhcpFlagBroadcast = 0x8000
)

var dhcpMagic = [4]byte{99, 130, 83, 99}

// DHCP option codes used here.
const (
	optPad           = 0
	optSubnetMask    = 1
	optRouter        = 3
	optDNS           = 6
	optMTU           = 26
	optRequestedIP   = 50
	optLeaseTime     = 51
	optMessageType   = 53
	optServerID      = 54
	optMessage       = 56
	optRenewalTime   = 58
	optRebindingTime = 59
	optSearchDomains = 119
	optEnd           = 255
)

// dhcpMsgType is the DHCP message type (option 53).
type dhcpMsgType uint8

// DHCP message types.
const (
	dhcpDiscover dhcpMsgType = 1
	dhcpOffer    dhcpMsgType = 2
	dhcpRequest  dhcpMsgType = 3
	dhcpDecline  dhcpMsgType = 4
	dhcpAck      dhcpMsgType = 5
	dhcpNak      dhcpMsgType = 6
	dhcpRelease  dhcpMsgType = 7
	dhcpInform   dhcpMsgType = 8
)

// dhcpOption is one option, code and data.
type dhcpOption struct {
	Code uint8
	Data []byte
}

// dhcpMessage is a DHCPv4 message. Addresses are IPv4 (0.0.0.0 when
// unset); the sname and file fields are not used by this server and are
// neither kept nor sent.
type dhcpMessage struct {
	Op     uint8
	HType  uint8
	HLen   uint8
	Hops   uint8
	XID    uint32
	Secs   uint16
	Flags  uint16
	CIAddr netip.Addr
	YIAddr netip.Addr
	SIAddr netip.Addr
	GIAddr netip.Addr
	CHAddr [16]byte
	// Options in the order they appeared, each code once.
	Options []dhcpOption
}

// Errors from decodeDHCP.
var (
	errDHCPShort = errors.New("dhcp: message too short")
	errDHCPMagic = errors.New("dhcp: bad magic cookie")
)

// decodeDHCP parses a DHCP message from a UDP payload. The returned
// message does not alias b.
func decodeDHCP(b []byte) (dhcpMessage, error) {
	if len(b) < dhcpFixedLen+len(dhcpMagic) {
		return dhcpMessage{}, errDHCPShort
	}
	m := dhcpMessage{
		Op:     b[0],
		HType:  b[1],
		HLen:   b[2],
		Hops:   b[3],
		XID:    binary.BigEndian.Uint32(b[4:]),
		Secs:   binary.BigEndian.Uint16(b[8:]),
		Flags:  binary.BigEndian.Uint16(b[10:]),
		CIAddr: netip.AddrFrom4([4]byte(b[12:16])),
		YIAddr: netip.AddrFrom4([4]byte(b[16:20])),
		SIAddr: netip.AddrFrom4([4]byte(b[20:24])),
		GIAddr: netip.AddrFrom4([4]byte(b[24:28])),
		CHAddr: [16]byte(b[28:44]),
	}
	if [4]byte(b[dhcpFixedLen:]) != dhcpMagic {
		return dhcpMessage{}, errDHCPMagic
	}
	opts := b[dhcpFixedLen+len(dhcpMagic):]
	for len(opts) > 0 {
		code := opts[0]
		if code == optEnd {
			break
		}
		if code == optPad {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			return dhcpMessage{}, fmt.Errorf("dhcp: option %d truncated", code)
		}
		data := opts[2 : 2+int(opts[1])]
		opts = opts[2+int(opts[1]):]
		if i := m.optionIndex(code); i >= 0 {
			m.Options[i].Data = append(m.Options[i].Data, data...)
			continue
		}
		m.Options = append(m.Options, dhcpOption{Code: code, Data: append([]byte{}, data...)})
	}
	return m, nil
}

func (m *dhcpMessage) optionIndex(code uint8) int {
	for i, o := range m.Options {
		if o.Code == code {
			return i
		}
	}
	return -1
}

// option returns the data of option code, or nil.
func (m *dhcpMessage) option(code uint8) []byte {
	if i := m.optionIndex(code); i >= 0 {
		return m.Options[i].Data
	}
	return nil
}

// msgType returns the message type, or 0 if the option is missing or bad.
func (m *dhcpMessage) msgType() dhcpMsgType {
	if d := m.option(optMessageType); len(d) == 1 {
		return dhcpMsgType(d[0])
	}
	return 0
}

// addrOption returns an IPv4 address option, or the zero Addr.
func (m *dhcpMessage) addrOption(code uint8) netip.Addr {
	if d := m.option(code); len(d) == 4 {
		return netip.AddrFrom4([4]byte(d))
	}
	return netip.Addr{}
}

// mac returns the client hardware address for Ethernet clients.
func (m *dhcpMessage) mac() (vswitch.MAC, bool) {
	if m.HType != dhcpHTypeEther || m.HLen != 6 {
		return vswitch.MAC{}, false
	}
	return vswitch.MAC(m.CHAddr[:6]), true
}

// addOption appends an option; encode splits data longer than 255 bytes.
func (m *dhcpMessage) addOption(code uint8, data []byte) {
	m.Options = append(m.Options, dhcpOption{Code: code, Data: data})
}

// encode appends the wire form of m to b.
func (m *dhcpMessage) encode(b []byte) []byte {
	start := len(b)
	var fixed [dhcpFixedLen]byte
	fixed[0], fixed[1], fixed[2], fixed[3] = m.Op, m.HType, m.HLen, m.Hops
	binary.BigEndian.PutUint32(fixed[4:], m.XID)
	binary.BigEndian.PutUint16(fixed[8:], m.Secs)
	binary.BigEndian.PutUint16(fixed[10:], m.Flags)
	for i, a := range []netip.Addr{m.CIAddr, m.YIAddr, m.SIAddr, m.GIAddr} {
		if a.Is4() {
			a4 := a.As4()
			copy(fixed[12+4*i:], a4[:])
		}
	}
	copy(fixed[28:44], m.CHAddr[:])
	b = append(b, fixed[:]...)
	b = append(b, dhcpMagic[:]...)
	for _, o := range m.Options {
		data := o.Data
		for {
			n := min(len(data), 255)
			b = append(b, o.Code, byte(n))
			b = append(b, data[:n]...)
			data = data[n:]
			if len(data) == 0 {
				break
			}
		}
	}
	b = append(b, optEnd)
	for len(b)-start < dhcpMinLen {
		b = append(b, optPad)
	}
	return b
}

// encodeSearchDomains encodes domain names as option 119 wants them
// (RFC 3397): DNS wire-format names, without compression.
func encodeSearchDomains(domains []string) ([]byte, error) {
	var b []byte
	for _, d := range domains {
		d = strings.TrimSuffix(d, ".")
		if d == "" || len(d) > 253 {
			return nil, fmt.Errorf("search domain %q: want a DNS name of 1-253 characters", d)
		}
		for label := range strings.SplitSeq(d, ".") {
			if label == "" || len(label) > 63 {
				return nil, fmt.Errorf("search domain %q: labels must be 1-63 characters", d)
			}
			b = append(b, byte(len(label)))
			b = append(b, label...)
		}
		b = append(b, 0)
	}
	return b, nil
}
