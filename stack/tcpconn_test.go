package stack

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// loopbackPair returns the two ends of a loopback TCP connection, closed
// when the test ends. A rcvBuf above zero is a's SO_RCVBUF, set before it
// connects so that the window it offers is small from the start.
func loopbackPair(t *testing.T, rcvBuf int) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	var d net.Dialer
	if rcvBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// gatewayConn returns both ends of one guest TCP connection: the guest's
// (from its own netstack) and the gateway's *tcpConn, from
// TCPRequest.Accept (the guest dials out) or Gateway.DialTCP (the
// gateway dials the guest).
func gatewayConn(t *testing.T, offloads, dial bool) (guestEnd *gonet.TCPConn, gw *tcpConn, g *guest) {
	t.Helper()
	ctx := testContext(t)
	accepted := make(chan TCPConn, 1)
	h := tcpHandlerFunc(func(r *TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	})
	n := newTestNet(t, Config{TCP: h})
	g = n.addGuest(t, guestAddr, guestMAC, offloads)
	var gwEnd net.Conn
	if dial {
		ln, err := gonet.ListenTCP(g.s, g.fullAddr(netip.AddrPortFrom(guestAddr, 8080)), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("guest listen: %v", err)
		}
		defer ln.Close()
		gch := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			gch <- c
		}()
		gwEnd, err = n.gw.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(guestAddr, 8080))
		if err != nil {
			t.Fatalf("DialTCP: %v", err)
		}
		c := <-gch
		if c == nil {
			t.Fatal("guest accept failed")
		}
		guestEnd = c.(*gonet.TCPConn)
	} else {
		c, err := gonet.DialContextTCP(ctx, g.s, g.fullAddr(netip.MustParseAddrPort("192.0.2.30:443")), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("guest dial: %v", err)
		}
		guestEnd = c
		select {
		case c := <-accepted:
			if c == nil {
				t.Fatal("Accept failed")
			}
			gwEnd = c
		case <-ctx.Done():
			t.Fatal("no connection arrived")
		}
	}
	t.Cleanup(func() { guestEnd.Close(); gwEnd.Close() })
	return guestEnd, gwEnd.(*tcpConn), g
}

// randomStream is n deterministic pseudo-random bytes.
func randomStream(seed byte, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), n)
}

// streamResult is what hashAll read.
type streamResult struct {
	Sum   [32]byte
	N     int64
	Error string
}

// hashAll hashes what r yields until EOF or an error.
func hashAll(r io.Reader) streamResult {
	h := sha256.New()
	n, err := io.Copy(h, struct{ io.Reader }{r})
	res := streamResult{N: n}
	copy(res.Sum[:], h.Sum(nil))
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// sendAll sends n bytes of randomStream(seed) on w and half-closes it.
func sendAll(w interface {
	io.Writer
	CloseWrite() error
}, seed byte, n int64) error {
	if _, err := io.Copy(struct{ io.Writer }{w}, randomStream(seed, n)); err != nil {
		return err
	}
	return w.CloseWrite()
}

// copyResult is what a copy returned.
type copyResult struct {
	N   int64
	Err error
}

// TestTCPConnDirect relays a guest connection to a host socket the way
// nat does, WriteTo one way and a copy through Write the other, and sends
// a different stream each way; each side half-closes after sending. The
// host socket's send buffer is small, so WriteTo keeps finding it full.
func TestTCPConnDirect(t *testing.T) {
	const size = 8 << 20
	tests := []struct {
		name           string
		offloads, dial bool
	}{
		{name: "accepted, vnet guest", offloads: true},
		{name: "accepted, plain guest"},
		{name: "dialled, vnet guest", offloads: true, dial: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			guestEnd, gw, _ := gatewayConn(t, tt.offloads, tt.dial)
			relayEnd, server := loopbackPair(t, 0)
			relayEnd.SetWriteBuffer(16 << 10) // WriteTo finds it full often

			up, down := make(chan copyResult, 1), make(chan copyResult, 1)
			go func() {
				n, err := gw.WriteTo(relayEnd)
				if err == nil {
					err = relayEnd.CloseWrite()
				}
				up <- copyResult{n, err}
			}()
			go func() { // as nat's relay does this direction
				n, err := io.Copy(struct{ io.Writer }{gw}, struct{ io.Reader }{relayEnd})
				if err == nil {
					err = gw.CloseWrite()
				}
				down <- copyResult{n, err}
			}()
			guestSent, serverSent := make(chan error, 1), make(chan error, 1)
			go func() { guestSent <- sendAll(guestEnd, 1, size) }()
			go func() { serverSent <- sendAll(server, 2, size) }()
			atServer, atGuest := make(chan streamResult, 1), make(chan streamResult, 1)
			go func() { atServer <- hashAll(server) }()
			go func() { atGuest <- hashAll(guestEnd) }()

			want := struct{ AtServer, AtGuest streamResult }{hashAll(randomStream(1, size)), hashAll(randomStream(2, size))}
			got := struct{ AtServer, AtGuest streamResult }{<-atServer, <-atGuest}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("received streams (-want +got):\n%s", diff)
			}
			for name, ch := range map[string]chan error{"guest send": guestSent, "server send": serverSent} {
				if err := <-ch; err != nil {
					t.Errorf("%s: %v", name, err)
				}
			}
			wantCopies := []copyResult{{N: size}, {N: size}}
			if diff := cmp.Diff(wantCopies, []copyResult{<-up, <-down}, cmp.Comparer(func(x, y error) bool { return x == y })); diff != "" {
				t.Errorf("WriteTo, copy results (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTCPConnDirectEcho has the host side echo in one goroutine, which
// stops reading while its own writes are blocked: a WriteTo that blocked
// in the host write while it held the endpoint's lock would stall the
// other direction's Write (it needs that lock), and through it the echo
// server, forever.
func TestTCPConnDirectEcho(t *testing.T) {
	const size = 8 << 20
	guestEnd, gw, _ := gatewayConn(t, true, false)
	// Small buffers make the echo server's writes block often.
	relayEnd, server := loopbackPair(t, 32<<10)
	for _, c := range []*net.TCPConn{relayEnd, server} {
		c.SetWriteBuffer(16 << 10)
	}
	go func() {
		if _, err := gw.WriteTo(relayEnd); err == nil {
			relayEnd.CloseWrite()
		}
	}()
	go func() {
		if _, err := io.Copy(struct{ io.Writer }{gw}, struct{ io.Reader }{relayEnd}); err == nil {
			gw.CloseWrite()
		}
	}()
	go func() {
		buf := make([]byte, 64<<10)
		io.CopyBuffer(struct{ io.Writer }{server}, struct{ io.Reader }{server}, buf)
		server.CloseWrite()
	}()
	sent := make(chan error, 1)
	go func() { sent <- sendAll(guestEnd, 3, size) }()
	guestEnd.SetReadDeadline(time.Now().Add(testTimeout))
	got := hashAll(guestEnd)
	// Compare first: after a stall the sender is still blocked, until the
	// test's cleanup closes the connection.
	if diff := cmp.Diff(hashAll(randomStream(3, size)), got); diff != "" {
		t.Fatalf("echo (-want +got):\n%s", diff)
	}
	if err := <-sent; err != nil {
		t.Fatalf("guest send: %v", err)
	}
}

// TestTCPConnDirectHalfClose: the guest's FIN ends WriteTo cleanly, and
// the connection still carries the answer the other way.
func TestTCPConnDirectHalfClose(t *testing.T) {
	guestEnd, gw, _ := gatewayConn(t, true, false)
	relayEnd, server := loopbackPair(t, 0)
	if _, err := guestEnd.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	guestEnd.CloseWrite()
	n, err := gw.WriteTo(relayEnd)
	if err != nil || n != int64(len("request")) {
		t.Fatalf("WriteTo = %d, %v; want 7, nil at the guest's FIN", n, err)
	}
	relayEnd.CloseWrite()
	if got, err := io.ReadAll(server); err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	if _, err := gw.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	gw.CloseWrite()
	if got, err := io.ReadAll(guestEnd); err != nil || string(got) != "answer" {
		t.Fatalf("guest read %q, %v", got, err)
	}
}

// TestTCPConnDirectReset: a reset on either side ends WriteTo with an
// error, not with a clean EOF, so the relay passes it on as a reset.
func TestTCPConnDirectReset(t *testing.T) {
	t.Run("guest", func(t *testing.T) {
		guestEnd, gw, g := gatewayConn(t, true, false)
		relayEnd, _ := loopbackPair(t, 0)
		up := make(chan copyResult, 1)
		go func() {
			n, err := gw.WriteTo(relayEnd)
			up <- copyResult{n, err}
		}()
		// Closing with unread data makes netstack send a RST.
		if _, err := gw.Write([]byte("unread")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { // until the guest has it
			for _, ep := range g.s.RegisteredEndpoints() {
				if n, err := ep.(tcpip.Endpoint).GetSockOptInt(tcpip.ReceiveQueueSizeOption); err == nil && n > 0 {
					return true
				}
			}
			return false
		})
		guestEnd.Close()
		if res := <-up; !errors.Is(res.Err, syscall.ECONNRESET) {
			t.Fatalf("WriteTo = %d, %v; want ECONNRESET", res.N, res.Err)
		}
	})
	t.Run("host", func(t *testing.T) {
		guestEnd, gw, _ := gatewayConn(t, true, false)
		relayEnd, server := loopbackPair(t, 0)
		server.SetLinger(0)
		server.Close()
		up := make(chan copyResult, 1)
		go func() {
			n, err := gw.WriteTo(relayEnd)
			up <- copyResult{n, err}
		}()
		// The first write after the RST fails with ECONNRESET, later
		// ones with EPIPE; keep sending until WriteTo gives up.
		ctx := testContext(t)
		for {
			select {
			case res := <-up:
				if !errors.Is(res.Err, syscall.ECONNRESET) && !errors.Is(res.Err, syscall.EPIPE) {
					t.Fatalf("WriteTo = %d, %v; want ECONNRESET or EPIPE", res.N, res.Err)
				}
				return
			case <-ctx.Done():
				t.Fatal("WriteTo never failed")
			case <-time.After(time.Millisecond):
				guestEnd.Write([]byte("x"))
			}
		}
	})
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx := testContext(t)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition never held")
		case <-time.After(time.Millisecond):
		}
	}
}

// TestTCPConnDirectEnds: Close and the deadlines end a WriteTo waiting
// for the guest's data.
func TestTCPConnDirectEnds(t *testing.T) {
	tests := []struct {
		name    string
		end     func(c *tcpConn)
		wantErr error
	}{
		{name: "Close", end: func(c *tcpConn) { c.Close() }, wantErr: net.ErrClosed},
		{name: "read deadline", end: func(c *tcpConn) { c.SetReadDeadline(time.Now()) }, wantErr: os.ErrDeadlineExceeded},
		{name: "deadline", end: func(c *tcpConn) { c.SetDeadline(time.Now().Add(time.Millisecond)) }, wantErr: os.ErrDeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, gw, _ := gatewayConn(t, true, false)
			relayEnd, _ := loopbackPair(t, 0)
			done := make(chan copyResult, 1)
			go func() {
				n, err := gw.WriteTo(relayEnd)
				done <- copyResult{n, err}
			}()
			tt.end(gw)
			if res := <-done; !errors.Is(res.Err, tt.wantErr) {
				t.Fatalf("WriteTo = %d, %v; want %v", res.N, res.Err, tt.wantErr)
			}
		})
	}
}

// TestTCPConnDeadlineReset: a passed deadline can be cleared again, and
// WriteTo then carries data as before.
func TestTCPConnDeadlineReset(t *testing.T) {
	guestEnd, gw, _ := gatewayConn(t, true, false)
	relayEnd, server := loopbackPair(t, 0)
	gw.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := gw.WriteTo(relayEnd); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteTo after the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	gw.SetReadDeadline(time.Time{})
	guestEnd.Write([]byte("late"))
	guestEnd.CloseWrite()
	if n, err := gw.WriteTo(relayEnd); err != nil || n != 4 {
		t.Fatalf("WriteTo = %d, %v; want 4, nil", n, err)
	}
	relayEnd.CloseWrite()
	if got, err := io.ReadAll(server); err != nil || string(got) != "late" {
		t.Fatalf("server read %q, %v", got, err)
	}
}

// TestTCPConnCopyOther: a writer that is not a host socket gets an
// ordinary copy.
func TestTCPConnCopyOther(t *testing.T) {
	guestEnd, gw, _ := gatewayConn(t, true, false)
	data, _ := io.ReadAll(randomStream(4, 1<<20))
	go func() {
		guestEnd.Write(data)
		guestEnd.CloseWrite()
	}()
	var got bytes.Buffer
	n, err := gw.WriteTo(&got)
	if err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("WriteTo(bytes.Buffer) = %d, %v, same data %v", n, err, bytes.Equal(got.Bytes(), data))
	}
}
