package sandbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// rtnl is a NETLINK_ROUTE socket in the agent's network namespace that
// sends one request at a time and waits for its acknowledgement: the few
// requests that configure a sandbox's interfaces, without the `ip` command
// (which the host may not have) or a netlink library. Not safe for
// concurrent use.
type rtnl struct {
	fd  int
	seq uint32
	buf []byte
}

func dialRoute() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &rtnl{fd: fd, buf: make([]byte, 8192)}, nil
}

func (r *rtnl) close() { unix.Close(r.fd) }

// setLink sets the link's MAC (when mac is non-nil) and MTU (when
// non-zero) and brings it up.
func (r *rtnl) setLink(index int, mac []byte, mtu int) error {
	return r.do(unix.RTM_NEWLINK, 0, linkRequest(index, mac, mtu))
}

// addAddr adds p (a host address with its prefix length) to the link; the
// kernel adds the prefix's on-link route itself.
func (r *rtnl) addAddr(index int, p netip.Prefix) error {
	return r.do(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, addrRequest(index, p))
}

// addDefaultRoute adds a default route via gw out of the link.
func (r *rtnl) addDefaultRoute(index int, gw netip.Addr) error {
	return r.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, routeRequest(index, gw))
}

// addMarkRule adds the IPv4 policy rule "pref pref fwmark mark lookup
// table".
func (r *rtnl) addMarkRule(mark, table, pref uint32) error {
	return r.do(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ruleRequest(mark, table, pref))
}

// addLocalDefault adds "local 0.0.0.0/0 dev <index> table <table>": every
// destination looked up in table is delivered locally.
func (r *rtnl) addLocalDefault(index int, table uint32) error {
	return r.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, localRouteRequest(index, table))
}

// ruleRequest is the body of an RTM_NEWRULE: struct fib_rule_hdr (12
// bytes: IPv4, action "to table", no flags), then FRA_PRIORITY, FRA_FWMARK, FRA_FWMASK (all
// bits) and FRA_TABLE.
func ruleRequest(mark, table, pref uint32) []byte {
	b := make([]byte, 12)
	b[0] = unix.AF_INET
	b[7] = unix.FR_ACT_TO_TBL
	b = appendAttr(b, unix.FRA_PRIORITY, ne.AppendUint32(nil, pref))
	b = appendAttr(b, unix.FRA_FWMARK, ne.AppendUint32(nil, mark))
	b = appendAttr(b, unix.FRA_FWMASK, ne.AppendUint32(nil, ^uint32(0)))
	b = appendAttr(b, unix.FRA_TABLE, ne.AppendUint32(nil, table))
	return b
}

// localRouteRequest is the body of an RTM_NEWROUTE for an IPv4 default
// route of type local (host scope) in table, out of the link.
func localRouteRequest(index int, table uint32) []byte {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = unix.AF_INET
	b[4] = unix.RT_TABLE_UNSPEC // RTA_TABLE names it
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_HOST
	b[7] = unix.RTN_LOCAL
	b = appendAttr(b, unix.RTA_TABLE, ne.AppendUint32(nil, table))
	b = appendAttr(b, unix.RTA_OIF, ne.AppendUint32(nil, uint32(index)))
	return b
}

// linkRequest is the body of an RTM_NEWLINK that changes an existing link:
// struct ifinfomsg, then IFLA_ADDRESS and IFLA_MTU.
func linkRequest(index int, mac []byte, mtu int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	ne.PutUint32(b[4:], uint32(index))
	ne.PutUint32(b[8:], unix.IFF_UP)  // ifi_flags
	ne.PutUint32(b[12:], unix.IFF_UP) // ifi_change: only IFF_UP changes
	if mac != nil {
		b = appendAttr(b, unix.IFLA_ADDRESS, mac)
	}
	if mtu != 0 {
		b = appendAttr(b, unix.IFLA_MTU, ne.AppendUint32(nil, uint32(mtu)))
	}
	return b
}

// addrRequest is the body of an RTM_NEWADDR: struct ifaddrmsg, then
// IFA_LOCAL, IFA_ADDRESS and, for IPv4, IFA_BROADCAST.
func addrRequest(index int, p netip.Prefix) []byte {
	a := p.Addr()
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = family(a)
	b[1] = byte(p.Bits())
	if a.Is6() {
		b[2] = unix.IFA_F_NODAD // usable at once; the switch has no duplicates to detect
	}
	b[3] = unix.RT_SCOPE_UNIVERSE
	ne.PutUint32(b[4:], uint32(index))
	b = appendAttr(b, unix.IFA_LOCAL, a.AsSlice())
	b = appendAttr(b, unix.IFA_ADDRESS, a.AsSlice())
	if a.Is4() && p.Bits() < 31 {
		b = appendAttr(b, unix.IFA_BROADCAST, broadcast(p).AsSlice())
	}
	return b
}

// routeRequest is the body of an RTM_NEWROUTE for a default route: struct
// rtmsg (main table, universe scope), then RTA_GATEWAY and RTA_OIF.
func routeRequest(index int, gw netip.Addr) []byte {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = family(gw)
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	b = appendAttr(b, unix.RTA_GATEWAY, gw.AsSlice())
	b = appendAttr(b, unix.RTA_OIF, ne.AppendUint32(nil, uint32(index)))
	return b
}

// do sends one request and waits for its acknowledgement.
func (r *rtnl) do(typ uint16, flags uint16, body []byte) error {
	r.seq++
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	ne.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	ne.PutUint16(msg[4:], typ)
	ne.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:], r.seq)
	msg = append(msg, body...)
	if err := unix.Sendto(r.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(r.fd, r.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		if done, err := parseAck(r.buf[:n], r.seq); done {
			return err
		}
	}
}

var errMalformed = errors.New("malformed netlink message")

// parseAck looks through one datagram from the kernel for the
// acknowledgement of request seq. It reports done when it found one (err
// is then the request's result) or when the datagram is malformed.
func parseAck(b []byte, seq uint32) (done bool, err error) {
	for len(b) >= unix.SizeofNlMsghdr {
		l := ne.Uint32(b[0:])
		typ := ne.Uint16(b[4:])
		if l < unix.SizeofNlMsghdr || uint64(l) > uint64(len(b)) {
			return true, errMalformed
		}
		if typ == unix.NLMSG_ERROR && ne.Uint32(b[8:]) == seq {
			if l < unix.SizeofNlMsghdr+4 {
				return true, errMalformed
			}
			if errno := int32(ne.Uint32(b[unix.SizeofNlMsghdr:])); errno != 0 {
				return true, syscall.Errno(-errno)
			}
			return true, nil
		}
		next := (uint64(l) + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next > uint64(len(b)) {
			break
		}
		b = b[next:]
	}
	return false, nil
}

// ne is netlink's byte order: the host's.
var ne = binary.NativeEndian

// appendAttr appends one rtattr, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = ne.AppendUint16(b, uint16(unix.SizeofRtAttr+len(data)))
	b = ne.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%unix.RTA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func family(a netip.Addr) byte {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// broadcast returns the IPv4 broadcast address of p.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | ^uint32(0)>>p.Bits()
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}
