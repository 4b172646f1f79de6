package sandbox

import (
	"net/netip"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// Byte builders in netlink's (native) byte order.
func u16(v uint16) []byte { return ne.AppendUint16(nil, v) }
func u32(v uint32) []byte { return ne.AppendUint32(nil, v) }

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestRequests(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{
			"link MAC, MTU, up",
			linkRequest(7, []byte{2, 0x42, 0xac, 0x11, 0, 2}, 1400),
			cat([]byte{unix.AF_UNSPEC, 0}, u16(0), u32(7), u32(unix.IFF_UP), u32(unix.IFF_UP),
				u16(10), u16(unix.IFLA_ADDRESS), []byte{2, 0x42, 0xac, 0x11, 0, 2, 0, 0},
				u16(8), u16(unix.IFLA_MTU), u32(1400)),
		},
		{
			"link up only",
			linkRequest(1, nil, 0),
			cat([]byte{unix.AF_UNSPEC, 0}, u16(0), u32(1), u32(unix.IFF_UP), u32(unix.IFF_UP)),
		},
		{
			"IPv4 address",
			addrRequest(7, netip.MustParsePrefix("172.17.0.2/16")),
			cat([]byte{unix.AF_INET, 16, 0, unix.RT_SCOPE_UNIVERSE}, u32(7),
				u16(8), u16(unix.IFA_LOCAL), []byte{172, 17, 0, 2},
				u16(8), u16(unix.IFA_ADDRESS), []byte{172, 17, 0, 2},
				u16(8), u16(unix.IFA_BROADCAST), []byte{172, 17, 255, 255}),
		},
		{
			"IPv4 /31 has no broadcast",
			addrRequest(3, netip.MustParsePrefix("10.0.0.1/31")),
			cat([]byte{unix.AF_INET, 31, 0, unix.RT_SCOPE_UNIVERSE}, u32(3),
				u16(8), u16(unix.IFA_LOCAL), []byte{10, 0, 0, 1},
				u16(8), u16(unix.IFA_ADDRESS), []byte{10, 0, 0, 1}),
		},
		{
			"IPv6 address without DAD",
			addrRequest(7, netip.MustParsePrefix("fd00::2/64")),
			cat([]byte{unix.AF_INET6, 64, unix.IFA_F_NODAD, unix.RT_SCOPE_UNIVERSE}, u32(7),
				u16(20), u16(unix.IFA_LOCAL), netip.MustParseAddr("fd00::2").AsSlice(),
				u16(20), u16(unix.IFA_ADDRESS), netip.MustParseAddr("fd00::2").AsSlice()),
		},
		{
			"default route",
			routeRequest(7, netip.MustParseAddr("172.17.0.1")),
			cat([]byte{unix.AF_INET, 0, 0, 0, unix.RT_TABLE_MAIN, unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST}, u32(0),
				u16(8), u16(unix.RTA_GATEWAY), []byte{172, 17, 0, 1},
				u16(8), u16(unix.RTA_OIF), u32(7)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("request body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBroadcast(t *testing.T) {
	tests := []struct{ prefix, want string }{
		{"172.17.0.2/16", "172.17.255.255"},
		{"192.168.1.77/24", "192.168.1.255"},
		{"10.1.2.3/8", "10.255.255.255"},
		{"10.1.2.3/30", "10.1.2.3"},
		{"10.1.2.3/0", "255.255.255.255"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			if got := broadcast(netip.MustParsePrefix(tt.prefix)); got.String() != tt.want {
				t.Errorf("broadcast(%s) = %v, want %s", tt.prefix, got, tt.want)
			}
		})
	}
}

// nlmsg builds one netlink message with the given type, sequence and body.
func nlmsg(typ uint16, seq uint32, body []byte) []byte {
	return cat(u32(uint32(unix.SizeofNlMsghdr+len(body))), u16(typ), u16(0), u32(seq), u32(0), body)
}

// ackBody is an nlmsgerr: the errno (negative) and the request's header.
func ackBody(errno int32, seq uint32) []byte {
	return cat(u32(uint32(errno)), nlmsg(unix.RTM_NEWLINK, seq, nil))
}

func TestParseAck(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		wantDone bool
		wantErr  error
	}{
		{"ack", nlmsg(unix.NLMSG_ERROR, 5, ackBody(0, 5)), true, nil},
		{"error", nlmsg(unix.NLMSG_ERROR, 5, ackBody(-int32(unix.EEXIST), 5)), true, syscall.EEXIST},
		{"another request's ack", nlmsg(unix.NLMSG_ERROR, 4, ackBody(0, 4)), false, nil},
		{"ack after another message", cat(nlmsg(unix.NLMSG_NOOP, 5, []byte{1, 2, 3, 4}), nlmsg(unix.NLMSG_ERROR, 5, ackBody(0, 5))), true, nil},
		{"empty", nil, false, nil},
		{"short header", []byte{1, 2, 3}, false, nil},
		{"length below header", cat(u32(8), u16(unix.NLMSG_ERROR), u16(0), u32(5), u32(0)), true, errMalformed},
		{"length beyond datagram", cat(u32(100), u16(unix.NLMSG_ERROR), u16(0), u32(5), u32(0)), true, errMalformed},
		{"error without errno", nlmsg(unix.NLMSG_ERROR, 5, nil), true, errMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done, err := parseAck(tt.in, 5)
			if done != tt.wantDone || err != tt.wantErr {
				t.Errorf("parseAck = %v, %v; want %v, %v", done, err, tt.wantDone, tt.wantErr)
			}
		})
	}
}

// FuzzParseAck feeds arbitrary datagrams to the netlink reply parser: it
// must not panic, and it may only report success for a datagram that
// holds a zero-errno acknowledgement of the request.
func FuzzParseAck(f *testing.F) {
	f.Add(nlmsg(unix.NLMSG_ERROR, 5, ackBody(0, 5)), uint32(5))
	f.Add(nlmsg(unix.NLMSG_ERROR, 5, ackBody(-1, 5)), uint32(5))
	f.Add(cat(nlmsg(unix.NLMSG_NOOP, 5, []byte{1}), nlmsg(unix.NLMSG_ERROR, 5, ackBody(0, 5))), uint32(5))
	f.Fuzz(func(t *testing.T, b []byte, seq uint32) {
		done, err := parseAck(b, seq)
		if !done && err != nil {
			t.Fatalf("parseAck = not done with error %v", err)
		}
		if done && err == nil && len(b) < unix.SizeofNlMsghdr+4 {
			t.Fatalf("parseAck accepted a %d-byte datagram", len(b))
		}
	})
}
