package nat

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// splicedClient returns a client connection relayed to an echo service
// the way a direct published connection is: spliced in both directions.
// The reader has already consumed the echo service's greeting.
func splicedClient(tb testing.TB) (net.Conn, *bufio.Reader) {
	tb.Helper()
	target := peerEcho(tb)
	files, err := (&plainSockets{}).get(context.Background(), 1)
	if err != nil {
		tb.Fatal(err)
	}
	inner, err := dialDirect(files[0], netip.AddrPortFrom(lo, 0), target, false)
	if err != nil {
		tb.Fatal(err)
	}
	client, outer := tcpPair(tb)
	done := make(chan struct{})
	go func() {
		relay(outer, inner)
		close(done)
	}()
	tb.Cleanup(func() {
		client.Close()
		<-done
	})
	r := bufio.NewReader(client)
	if _, err := r.ReadString('\n'); err != nil {
		tb.Fatal(err)
	}
	return client, r
}

// TestSplicedRoundTrips: messages of every size from 1 byte to beyond the
// pipe, each answered before the next is sent, all come back whole. A
// relay that waited for more bytes from a socket it had not drained would
// hang here: nothing else would arrive to wake it.
func TestSplicedRoundTrips(t *testing.T) {
	c, r := splicedClient(t)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	for _, size := range []int{1, 64, 255, 256, 257, 1500, 4096, 65536, 1 << 20, 3 << 20} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		// Many small writes queue many buffers on the relay's socket.
		for off := 0; off < size; off += 100 {
			if _, err := c.Write(msg[off:min(off+100, size)]); err != nil {
				t.Fatal(err)
			}
		}
		got := make([]byte, size)
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("%d-byte message: %v", size, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("%d-byte message came back changed", size)
		}
	}
}

// BenchmarkSplicedRoundTrip is a 64-byte request and its answer through a
// spliced relay, workload 6a's path without the sandbox.
func BenchmarkSplicedRoundTrip(b *testing.B) {
	c, r := splicedClient(b)
	msg, got := make([]byte, 64), make([]byte, 64)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, got); err != nil {
			b.Fatal(err)
		}
	}
}
