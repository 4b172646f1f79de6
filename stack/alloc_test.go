package stack

import (
	"runtime"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestFrameFromPacketAllocs checks that turning an outbound packet into a
// frame (the netstack -> switch hot path) allocates nothing once the
// frame pool is warm.
func TestFrameFromPacketAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{
		ReserveHeaderBytes: header.EthernetMinimumSize + header.IPv4MinimumSize,
		Payload:            buffer.MakeWithData(make([]byte, 1400)),
	})
	defer pkt.DecRef()
	pkt.NetworkHeader().Push(header.IPv4MinimumSize)
	pkt.LinkHeader().Push(header.EthernetMinimumSize)
	allocs := testing.AllocsPerRun(100, func() {
		f := frameFromPacket(pkt)
		f.DecRef()
	})
	if allocs != 0 {
		t.Errorf("frameFromPacket: %v allocations per packet, want 0", allocs)
	}
}

// TestGatewayCloseStopsGoroutines checks that a gateway that carried a
// connection leaves no goroutines behind once it and its switch are
// closed.
func TestGatewayCloseStopsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("traffic", TestTCPForward)
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
