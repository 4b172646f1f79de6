package vswitch

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPipeCarriesFramesAndHeaders(t *testing.T) {
	a, b := NewPipe(true)
	defer a.Close()
	hdr := VnetHdr{Flags: VnetFlagNeedsCsum, GSOType: GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	small := numbered(1)
	large := pattern(MaxFrameLen)
	if err := a.Send(hdr, small); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(VnetHdr{}, large); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(VnetHdr{}, numbered(3)); err != nil {
		t.Fatal(err)
	}

	// Slot 0 is large enough: the pipe copies into it. Slot 1 is too
	// small for the large frame: the pipe swaps in its own. Slot 2 is nil.
	big, tiny := NewFrame(MaxFrameLen), NewFrame(10)
	slots := []*Frame{big, tiny, nil, nil}
	n, err := b.ReadFrames(slots)
	if err != nil || n != 3 {
		t.Fatalf("ReadFrames = %d, %v; want 3, nil", n, err)
	}
	if slots[0] != big {
		t.Errorf("slot 0 replaced although the frame fitted")
	}
	type got struct {
		Hdr  VnetHdr
		Data []byte
	}
	var gots []got
	for _, f := range slots[:n] {
		gots = append(gots, got{f.Hdr, f.Data})
	}
	want := []got{{hdr, small}, {VnetHdr{}, large}, {VnetHdr{}, numbered(3)}}
	if diff := cmp.Diff(want, gots, bytesEqual); diff != "" {
		t.Errorf("frames read (-want +got):\n%s", diff)
	}
	for _, f := range slots[:n] {
		f.DecRef()
	}
}

func TestPipeBounded(t *testing.T) {
	a, b := NewPipe(false)
	defer a.Close()
	for i := range PipeLen + 5 {
		if err := a.Send(VnetHdr{}, numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.Dropped(); got != 5 {
		t.Errorf("Dropped() = %d, want 5", got)
	}
	if got := b.Dropped(); got != 0 {
		t.Errorf("other end Dropped() = %d, want 0", got)
	}
	_, data, err := b.Receive(context.Background())
	if err != nil || !cmp.Equal(data, numbered(0)) {
		t.Errorf("Receive = %x, %v; want the first frame", data, err)
	}
}

func TestPipeRejectsOffloadFramesWithoutOffloads(t *testing.T) {
	a, _ := NewPipe(false)
	defer a.Close()
	for _, hdr := range []VnetHdr{{GSOType: GSOTCPv4, GSOSize: 100}, {Flags: VnetFlagNeedsCsum}} {
		if err := a.Send(hdr, numbered(1)); !errors.Is(err, errPipeOffload) {
			t.Errorf("Send(%+v) error = %v, want errPipeOffload", hdr, err)
		}
	}
}

func TestPipeCloseUnblocksReaders(t *testing.T) {
	a, b := NewPipe(false)
	if err := a.Send(VnetHdr{}, numbered(1)); err != nil { // released by Close
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() {
		_, err := a.ReadFrames([]*Frame{nil})
		errs <- err
	}()
	go func() {
		_, _, err := a.Receive(context.Background())
		errs <- err
	}()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after Close: err = %v, want net.ErrClosed", err)
		}
	}
	if _, err := b.ReadFrames([]*Frame{nil}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadFrames on the closed end: err = %v, want net.ErrClosed", err)
	}
	if err := a.WriteFrames(nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteFrames after Close: err = %v, want net.ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestPipeReceiveHonoursContext(t *testing.T) {
	a, _ := NewPipe(false)
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := a.Receive(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Receive with a cancelled context: err = %v, want context.Canceled", err)
	}
}
