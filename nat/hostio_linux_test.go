package nat

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestHostIOStream(t *testing.T) {
	a, b := tcpPair(t)
	h, err := newHostIO(a, true)
	if err != nil {
		t.Fatal(err)
	}

	// Larger than both socket buffers: Write must wait for room.
	want := bytes.Repeat([]byte("usernet "), 1<<19)
	got := make(chan []byte, 1)
	go func() {
		buf, _ := io.ReadAll(io.LimitReader(b, int64(len(want))))
		got <- buf
	}()
	if n, err := h.Write(want); n != len(want) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	if !bytes.Equal(<-got, want) {
		t.Fatal("the peer read other bytes than were written")
	}

	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	b.CloseWrite()
	all, err := io.ReadAll(h)
	if err != nil || string(all) != "hello" {
		t.Fatalf("ReadAll = %q, %v; want \"hello\", nil (EOF ends it)", all, err)
	}
}

func TestHostIODeadlineAndClose(t *testing.T) {
	a, _ := tcpPair(t)
	h, err := newHostIO(a, true)
	if err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := h.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v; want os.ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := h.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the Read wait; Close ends it either way
	a.Close()
	if err := <-done; !isClosed(err) {
		t.Fatalf("Read on a closed socket = %v; want net.ErrClosed", err)
	}
}

func TestHostIODatagram(t *testing.T) {
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c, err := net.DialUDP("udp", nil, peer.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := newHostIO(c, false)
	if err != nil {
		t.Fatal(err)
	}

	if n, err := h.Write([]byte("ping")); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v; want 4, nil", n, err)
	}
	buf := make([]byte, 64)
	n, from, err := peer.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("peer read %q, %v; want \"ping\"", buf[:n], err)
	}
	for _, msg := range []string{"", "pong"} {
		if _, err := peer.WriteToUDP([]byte(msg), from); err != nil {
			t.Fatal(err)
		}
		n, err := h.Read(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("Read = %q, %v; want %q, nil (an empty datagram is not EOF)", buf[:n], err, msg)
		}
	}

	// Nothing listens any more: the kernel reports the ICMP error on the
	// connected socket, and the flow's loops must recognise it.
	peer.Close()
	h.Write([]byte("anyone?"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.Read(buf); !icmpReported(err) {
		t.Fatalf("Read after the peer went away = %v; want ECONNREFUSED", err)
	}
}

func TestHostPacketConn(t *testing.T) {
	for _, tc := range []struct {
		name, network, listen string
		clients               []string // addresses the clients dial the listener at
	}{
		{"IPv4", "udp4", "127.0.0.1:0", []string{"127.0.0.1"}},
		{"dual-stack", "udp", "[::]:0", []string{"127.0.0.1", "::1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := net.ListenPacket(tc.network, tc.listen)
			if err != nil {
				t.Skipf("listen %s %s: %v", tc.network, tc.listen, err)
			}
			defer pc.Close()
			h, err := newHostPacketConn(pc.(*net.UDPConn))
			if err != nil {
				t.Fatal(err)
			}
			port := pc.LocalAddr().(*net.UDPAddr).Port
			send := h.newSendOp()
			for _, host := range tc.clients {
				c, err := net.Dial("udp", net.JoinHostPort(host, strconv.Itoa(port)))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				for _, msg := range []string{"hello from " + host, ""} {
					if _, err := c.Write([]byte(msg)); err != nil {
						t.Fatal(err)
					}
					buf := make([]byte, 64)
					n, from, err := h.ReadFrom(buf)
					if err != nil || string(buf[:n]) != msg {
						t.Fatalf("ReadFrom = %q, %v; want %q", buf[:n], err, msg)
					}
					local := c.LocalAddr().(*net.UDPAddr).AddrPort()
					if from.Addr().Unmap() != local.Addr().Unmap() || from.Port() != local.Port() {
						t.Fatalf("ReadFrom reports the sender as %v; the client is %v", from, local)
					}
					// The reply goes back to the address ReadFrom reported.
					if _, err := h.WriteTo(send, []byte("re: "+msg), from); err != nil {
						t.Fatalf("WriteTo %v: %v", from, err)
					}
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, err = c.Read(buf)
					if err != nil || string(buf[:n]) != "re: "+msg {
						t.Fatalf("client read %q, %v; want %q", buf[:n], err, "re: "+msg)
					}
				}
			}
			if tc.network == "udp4" {
				if _, err := h.WriteTo(send, []byte("x"), netip.MustParseAddrPort("[::1]:9")); err == nil {
					t.Error("WriteTo an IPv6 peer from an IPv4 socket succeeded; want an error")
				}
			}
			done := make(chan error, 1)
			go func() {
				_, _, err := h.ReadFrom(make([]byte, 64))
				done <- err
			}()
			pc.Close()
			if err := <-done; !isClosed(err) {
				t.Fatalf("ReadFrom on a closed socket = %v; want net.ErrClosed", err)
			}
		})
	}
}

func TestSockaddrRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		ap   string
		v6   bool
	}{
		{"IPv4 socket", "192.0.2.7:5353", false},
		{"IPv4 socket, mapped address", "[::ffff:192.0.2.7]:5353", false},
		{"IPv6 socket", "[2001:db8::1]:443", true},
		{"IPv6 socket, link-local with zone index", "[fe80::1%3]:53", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ap := netip.MustParseAddrPort(tc.ap)
			var sa unix.RawSockaddrAny
			encodeSockaddr(&sa, ap, tc.v6)
			got := decodeSockaddr(&sa)
			want := ap
			if !tc.v6 {
				want = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			}
			if got != want {
				t.Errorf("decode(encode(%v)) = %v, want %v", ap, got, want)
			}
		})
	}
}
