package nat

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { c.Close(); r.c.Close() })
	return c.(*net.TCPConn), r.c.(*net.TCPConn)
}

// tcpServer serves every connection to a new loopback listener with
// handle, in a goroutine of its own, and closes it when handle returns.
// Cleanup closes the listener and any connection still open, and waits
// for the handlers.
func tcpServer(t testing.TB, handle func(c net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool
		live   = make(map[net.Conn]struct{})
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range live {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			live[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(live, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			})
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// relayed starts a relay between two loopback connections and returns the
// outer ends: bytes written to a come out of b and vice versa.
func relayed(t *testing.T) (a, b *net.TCPConn, done <-chan relayResult) {
	t.Helper()
	a, ra := tcpPair(t)
	rb, b := tcpPair(t)
	ch := make(chan relayResult, 1)
	go func() { ch <- relay(ra, rb) }()
	return a, b, ch
}

// randomStream is n deterministic pseudo-random bytes.
func randomStream(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), n)
}

func hashOf(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n, err
}

// TestRelayBothWaysAndHalfClose sends different streams each way at once;
// each side half-closes after sending and must still receive the other
// stream whole.
func TestRelayBothWaysAndHalfClose(t *testing.T) {
	const size = 8 << 20
	a, b, done := relayed(t)
	want1, _, _ := hashOf(randomStream(1, size))
	want2, _, _ := hashOf(randomStream(2, size))

	send := func(c *net.TCPConn, seed uint64) chan error {
		ch := make(chan error, 1)
		go func() {
			_, err := io.Copy(struct{ io.Writer }{c}, randomStream(seed, size))
			if err == nil {
				err = c.CloseWrite()
			}
			ch <- err
		}()
		return ch
	}
	e1, e2 := send(a, 1), send(b, 2)
	got1, n1, err1 := hashOf(b)
	got2, n2, err2 := hashOf(a)
	for _, err := range []error{<-e1, <-e2, err1, err2} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got1 != want1 || got2 != want2 || n1 != size || n2 != size {
		t.Fatalf("streams differ: a->b %d bytes match=%v, b->a %d bytes match=%v", n1, got1 == want1, n2, got2 == want2)
	}
	res := <-done
	if diff := cmp.Diff(relayResult{AToB: size, BToA: size}, res, cmp.Comparer(func(x, y error) bool { return x == y })); diff != "" {
		t.Fatalf("relay result (-want +got):\n%s", diff)
	}
}

// TestRelayHalfCloseKeepsReverse: a side that shuts down its sending half
// first still gets an answer sent afterwards.
func TestRelayHalfCloseKeepsReverse(t *testing.T) {
	a, b, done := relayed(t)
	if _, err := a.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := a.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "request" {
		t.Fatalf("b read %q, %v; want request then EOF", got, err)
	}
	if _, err := b.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	b.CloseWrite()
	got, err = io.ReadAll(a)
	if err != nil || string(got) != "answer" {
		t.Fatalf("a read %q, %v; want answer then EOF", got, err)
	}
	<-done
}

// TestRelayResetClosesBoth: when one side resets, the other side's
// connection is closed too instead of waiting forever.
func TestRelayResetClosesBoth(t *testing.T) {
	a, b, done := relayed(t)
	a.SetLinger(0)
	a.Close()
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(b); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("b read: %v, want the reset passed on", err)
	}
	res := <-done
	if res.AToBErr == nil {
		t.Fatalf("relay result %+v: want the reset reported on a->b", res)
	}
}

// sizeRecorder records the length of every Write.
type sizeRecorder struct {
	bytes.Buffer
	sizes []int
}

func (s *sizeRecorder) Write(p []byte) (int, error) {
	s.sizes = append(s.sizes, len(p))
	return s.Buffer.Write(p)
}

// TestCopyGrowing checks the buffer schedule: 32 KiB writes for the first
// MiB, 256 KiB after it, and the data intact. bytes.Reader implements
// WriterTo, which must not bypass the buffer.
func TestCopyGrowing(t *testing.T) {
	data, _ := io.ReadAll(randomStream(3, 3<<20))
	var w sizeRecorder
	n, err := copyGrowing(&w, bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("copyGrowing = %d, %v; want %d, nil", n, err, len(data))
	}
	if !bytes.Equal(w.Bytes(), data) {
		t.Fatalf("copied data differs")
	}
	var want []int
	for range relayGrowAfter / relaySmallBuf {
		want = append(want, relaySmallBuf)
	}
	for range (len(data) - relayGrowAfter) / relayLargeBuf {
		want = append(want, relayLargeBuf)
	}
	if diff := cmp.Diff(want, w.sizes); diff != "" {
		t.Fatalf("write sizes (-want +got):\n%s", diff)
	}
}

// BenchmarkRelay measures the relay alone between two loopback TCP
// connections, one direction at a time, 1 MiB per op.
func BenchmarkRelay(b *testing.B) {
	const chunk = 1 << 20
	a, r1 := tcpPair(b)
	r2, c := tcpPair(b)
	done := make(chan relayResult, 1)
	go func() { done <- relay(r1, r2) }()
	go func() { io.Copy(io.Discard, c) }()
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := a.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	a.CloseWrite()
	c.CloseWrite()
	<-done
}

// copierConn stands in for a stack.TCPConn: a connection that is not a
// *net.TCPConn and copies by itself. It records which of its copy methods
// ran; it has a ReadFrom too, which copyConn must leave alone.
type copierConn struct {
	net.Conn
	used string
}

func (d *copierConn) WriteTo(w io.Writer) (int64, error) {
	d.used = "WriteTo"
	return io.Copy(w, struct{ io.Reader }{d.Conn})
}

func (d *copierConn) ReadFrom(r io.Reader) (int64, error) {
	d.used = "ReadFrom"
	return io.Copy(struct{ io.Writer }{d.Conn}, r)
}

// TestCopyConnPath checks that copyConn leaves the copy to the guest side
// only from a guest connection to a host socket, and that the bytes
// arrive either way.
func TestCopyConnPath(t *testing.T) {
	tests := []struct {
		name               string
		guestSrc, guestDst bool
		want               string // the copierConn method that must run
	}{
		{name: "guest to host", guestSrc: true, want: "WriteTo"},
		{name: "host to guest", guestDst: true},
		{name: "host to host"},
		{name: "guest to guest", guestSrc: true, guestDst: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			feed, srcEnd := tcpPair(t)
			dstEnd, out := tcpPair(t)
			var src, dst net.Conn = srcEnd, dstEnd
			var used []*copierConn
			if tt.guestSrc {
				d := &copierConn{Conn: srcEnd}
				src, used = d, append(used, d)
			}
			if tt.guestDst {
				d := &copierConn{Conn: dstEnd}
				dst, used = d, append(used, d)
			}
			if _, err := feed.Write([]byte("payload")); err != nil {
				t.Fatal(err)
			}
			feed.CloseWrite()
			n, err := copyConn(dst, src)
			if err != nil || n != 7 {
				t.Fatalf("copyConn = %d, %v; want 7, nil", n, err)
			}
			dstEnd.CloseWrite()
			if got, err := io.ReadAll(out); err != nil || string(got) != "payload" {
				t.Fatalf("read %q, %v; want payload", got, err)
			}
			got := ""
			for _, d := range used {
				got += d.used
			}
			if got != tt.want {
				t.Errorf("copy methods run: %q, want %q", got, tt.want)
			}
		})
	}
}
