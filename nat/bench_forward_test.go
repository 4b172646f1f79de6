package nat

import (
	"net"
	"net/netip"
	"testing"
)

// BenchmarkPublishedTCPConn measures one whole connection through a
// published port per iteration: a loopback client connects, sends two
// bytes, half-closes and reads the guest's answer. Its CPU per operation
// is what bounds the published-port connection rate.
func BenchmarkPublishedTCPConn(b *testing.B) {
	n := newTestNet(b, Config{})
	g := n.addGuest(b, guestAddr)
	remotes := guestService(b, g, 80)
	// guestService reports every client; drain the reports so that its
	// accept loop never blocks, until the benchmark ends.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-remotes:
			case <-done:
				return
			}
		}
	}()
	f := NewForwards(n.gw, n.gw.Addr(), testLogger(b))
	defer f.Close()
	m, err := f.Add(Mapping{Proto: "tcp", HostIP: lo, Target: netip.AddrPortFrom(guestAddr, 80)})
	if err != nil {
		b.Fatal(err)
	}
	addr := netip.AddrPortFrom(lo, m.HostPort).String()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if got := exchange(b, c, "hi"); got != "guest saw hi" {
			b.Fatalf("answer %q", got)
		}
		c.Close()
	}
}
