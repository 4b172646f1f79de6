package nat

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
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
