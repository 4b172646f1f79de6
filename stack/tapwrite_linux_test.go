package stack

import (
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	vswitch "github.com/usernet/usernet/switch"
)

// TestTAPConcurrentWrites has several goroutines call WriteFrames on one
// vnet TAP at once, as the switch does for a Direct port, and checks with
// a packet socket in the namespace that the kernel received every frame
// intact.
func TestTAPConcurrentWrites(t *testing.T) {
	ns := testNetns(t)
	f := createTAP(t, ns)
	tap, err := NewTAP(f, nil)
	if err != nil {
		t.Fatalf("NewTAP: %v", err)
	}
	t.Cleanup(func() { tap.Close() })
	run(t, "ip", "-n", ns, "link", "set", "tap0", "up")

	const etherType = 0x88b5 // IEEE local experimental
	var sock int
	if err := inNetns(ns, func() error {
		ifi, err := net.InterfaceByName("tap0")
		if err != nil {
			return err
		}
		proto := int(htons(etherType))
		sock, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		return unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: ifi.Index})
	}); err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(sock) })
	tv := unix.NsecToTimeval(int64(10 * time.Second))
	if err := unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatalf("SO_RCVTIMEO: %v", err)
	}

	const writers, perWriter = 4, 50
	var want []string
	var wg sync.WaitGroup
	for w := range writers {
		for i := range perWriter {
			want = append(want, payloadName(w, i))
		}
		wg.Go(func() {
			for i := range perWriter {
				fr := vswitch.NewFrame(14 + 64)
				copy(fr.Data[0:6], vswitch.Broadcast[:])
				copy(fr.Data[6:12], []byte{0x02, 0, 0, 0, 0, byte(w + 1)})
				binary.BigEndian.PutUint16(fr.Data[12:14], etherType)
				clear(fr.Data[14:])
				copy(fr.Data[14:], payloadName(w, i))
				if err := tap.WriteFrames([]*vswitch.Frame{fr}); err != nil {
					t.Errorf("writer %d: WriteFrames: %v", w, err)
				}
				fr.DecRef()
			}
		})
	}
	wg.Wait()

	var got []string
	buf := make([]byte, 2048)
	for len(got) < len(want) {
		n, _, err := unix.Recvfrom(sock, buf, 0)
		if err != nil {
			t.Fatalf("received %d of %d frames: %v", len(got), len(want), err)
		}
		if n != 64 {
			t.Fatalf("received a %d-byte payload, want 64", n)
		}
		got = append(got, string(buf[:len(payloadName(0, 0))]))
	}
	if diff := cmp.Diff(want, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("frames received (-want +got):\n%s", diff)
	}
}

func payloadName(w, i int) string {
	return string([]byte{'w', byte('0' + w), '-', byte('0' + i/10), byte('0' + i%10)})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
