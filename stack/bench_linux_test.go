package stack

import (
	"io"
	"testing"

	"golang.org/x/sys/unix"

	vswitch "github.com/usernet/usernet/switch"
)

// zeros is an endless source of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// BenchmarkTAPTCP measures one TCP stream between a namespace's kernel and
// the gateway's TCP handler at MTU 1500, through a vnet TAP on the switch
// (New), the same with the TAP attached as a Direct port (written by the
// netstack goroutines themselves, as the engine attaches sandboxes), and
// through gVisor's fdbased endpoint on a plain TAP (NewFdbased).
// "up" is guest to gateway, "down" gateway to guest. Needs root.
func BenchmarkTAPTCP(b *testing.B) {
	for _, ep := range []string{"vnet", "vnet-direct", "fdbased"} {
		for _, dir := range []string{"up", "down"} {
			b.Run(ep+"/"+dir, func(b *testing.B) { benchTAPTCP(b, ep, dir == "up") })
		}
	}
}

func benchTAPTCP(b *testing.B, ep string, up bool) {
	ns := testNetns(b)
	const chunk = 64 << 10
	total := int64(b.N) * chunk
	done := make(chan int64, 1)
	h := tcpHandlerFunc(func(r *TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var n int64
			if up {
				n, _ = io.Copy(io.Discard, c)
			} else {
				n, _ = io.CopyN(c, zeros{}, total)
				c.CloseWrite()
			}
			done <- n
		}()
	})
	cfg := Config{Name: "bench", Addr: gwPrefix, TCP: h}
	switch ep {
	case "vnet", "vnet-direct":
		f := createTAP(b, ns)
		tap, err := NewTAP(f, nil)
		if err != nil {
			b.Fatalf("NewTAP: %v", err)
		}
		sw := vswitch.New(vswitch.Config{})
		b.Cleanup(sw.Close)
		gw, err := New(cfg)
		if err != nil {
			b.Fatalf("New: %v", err)
		}
		b.Cleanup(gw.Close)
		if _, err := gw.Attach(sw); err != nil {
			b.Fatalf("Attach: %v", err)
		}
		pc := vswitch.PortConfig{Name: "tap0", Offloads: tap.Offloads(), Direct: ep == "vnet-direct"}
		if _, err := sw.Attach(tap, pc); err != nil {
			b.Fatalf("attach TAP: %v", err)
		}
	case "fdbased":
		gw, err := NewFdbased(cfg, createPlainTAP(b, ns, "tap0"))
		if err != nil {
			b.Fatalf("NewFdbased: %v", err)
		}
		b.Cleanup(gw.Close)
	}
	configureGuest(b, ns)
	c := nsDialTCP(b, ns, &unix.SockaddrInet4{Port: 5001, Addr: [4]byte{192, 0, 2, 40}})
	b.SetBytes(chunk)
	b.ResetTimer()
	var got int64
	if up {
		if _, err := io.CopyN(c, zeros{}, total); err != nil {
			b.Fatalf("send: %v", err)
		}
		c.CloseWrite()
		got = <-done
	} else {
		got, _ = io.Copy(io.Discard, c)
	}
	b.StopTimer()
	if got != total {
		b.Fatalf("moved %d bytes, want %d", got, total)
	}
}
