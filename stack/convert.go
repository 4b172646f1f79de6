package stack

// Conversions at the boundary with gVisor: tcpip.Address and tcpip.Error
// never leave this package (STYLE 12, 14), so everything that crosses goes
// through the helpers here.

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// toTCPIP converts a netip address; an IPv4-mapped IPv6 address becomes
// IPv4, as gVisor's IPv4 protocol expects.
func toTCPIP(a netip.Addr) tcpip.Address {
	a = a.Unmap()
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// fromTCPIP converts a gVisor address; the zero tcpip.Address becomes the
// zero netip.Addr.
func fromTCPIP(a tcpip.Address) netip.Addr {
	addr, _ := netip.AddrFromSlice(a.AsSlice())
	return addr
}

// protoOf returns the network protocol that carries a.
func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// netstackError is a tcpip.Error turned into a Go error. Where a tcpip
// error has an obvious errno it unwraps to it, so callers can test
// errors.Is(err, syscall.ECONNREFUSED) or errors.Is(err, net.ErrClosed)
// without knowing gVisor.
type netstackError struct {
	msg   string
	errno error
}

func (e *netstackError) Error() string { return e.msg }
func (e *netstackError) Unwrap() error { return e.errno }

// convertError converts a tcpip.Error, prefixed with op; nil stays nil.
func convertError(op string, err tcpip.Error) error {
	if err == nil {
		return nil
	}
	var errno error
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		errno = syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		errno = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		errno = syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		errno = syscall.ETIMEDOUT
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress, *tcpip.ErrAlreadyBound:
		errno = syscall.EADDRINUSE
	case *tcpip.ErrNoPortAvailable:
		errno = syscall.EAGAIN
	case *tcpip.ErrHostUnreachable:
		errno = syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		errno = syscall.ENETUNREACH
	case *tcpip.ErrBadLocalAddress:
		errno = syscall.EADDRNOTAVAIL
	case *tcpip.ErrMessageTooLong:
		errno = syscall.EMSGSIZE
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive, *tcpip.ErrInvalidEndpointState:
		errno = net.ErrClosed
	}
	return &netstackError{msg: fmt.Sprintf("%s: %s", op, err), errno: errno}
}
