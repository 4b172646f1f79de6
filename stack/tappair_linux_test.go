package stack

import (
	"errors"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	vswitch "github.com/usernet/usernet/switch"
)

// tapPair returns two TAPs joined by a SOCK_SEQPACKET socket pair, which
// keeps frame boundaries as a TAP device does: what one writes, the other
// reads. It needs no privileges.
func tapPair(t *testing.T, vnet bool) (a, b *TAP) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	a, b = wrapTAP(fds[0], "a", vnet, nil), wrapTAP(fds[1], "b", vnet, nil)
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

// releaseCounter is a vswitch.Owner that counts its releases.
type releaseCounter int

func (c *releaseCounter) DecRef() { *c++ }

type wireFrame struct {
	Hdr  vswitch.VnetHdr
	Data string
}

func TestTAPFrames(t *testing.T) {
	gso := vswitch.VnetHdr{Flags: vswitch.VnetFlagNeedsCsum, GSOType: vswitch.GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	big := string(make([]byte, 60000))
	tests := []struct {
		name    string
		vnet    bool
		scatter bool // write the frames as scatter frames
		in      []wireFrame
		want    []wireFrame
	}{
		{
			name: "vnet keeps headers",
			vnet: true,
			in:   []wireFrame{{Hdr: gso, Data: "ethernet-frame-one"}, {Data: "ethernet-frame-two"}, {Hdr: gso, Data: big}},
			want: []wireFrame{{Hdr: gso, Data: "ethernet-frame-one"}, {Data: "ethernet-frame-two"}, {Hdr: gso, Data: big}},
		},
		{
			name:    "scatter frames gathered",
			vnet:    true,
			scatter: true,
			in:      []wireFrame{{Hdr: gso, Data: "ethernet-frame-one"}, {Hdr: gso, Data: big}},
			want:    []wireFrame{{Hdr: gso, Data: "ethernet-frame-one"}, {Hdr: gso, Data: big}},
		},
		{
			name: "plain carries frames only",
			vnet: false,
			in:   []wireFrame{{Data: "ethernet-frame-one"}, {Data: "ethernet-frame-two"}},
			want: []wireFrame{{Data: "ethernet-frame-one"}, {Data: "ethernet-frame-two"}},
		},
		{
			name: "runts dropped",
			vnet: true,
			in:   []wireFrame{{Data: "short"}, {Data: "ethernet-frame-two"}},
			want: []wireFrame{{Data: "ethernet-frame-two"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := tapPair(t, tt.vnet)
			var out []*vswitch.Frame
			var owner releaseCounter
			for _, w := range tt.in {
				var f *vswitch.Frame
				if tt.scatter {
					// Split after the Ethernet header and halfway
					// through the rest, with an empty slice between.
					f = vswitch.NewScatterFrame(&owner)
					mid := 14 + (len(w.Data)-14)/2
					f.AppendSlice([]byte(w.Data[:14]))
					f.AppendSlice(nil)
					f.AppendSlice([]byte(w.Data[14:mid]))
					f.AppendSlice([]byte(w.Data[mid:]))
				} else {
					f = vswitch.NewFrame(len(w.Data))
					copy(f.Data, w.Data)
				}
				f.Hdr = w.Hdr
				out = append(out, f)
			}
			if err := a.WriteFrames(out); err != nil {
				t.Fatalf("WriteFrames: %v", err)
			}
			for _, f := range out {
				f.DecRef()
			}
			if tt.scatter && int(owner) != len(out) {
				t.Errorf("owners released %d times for %d frames", owner, len(out))
			}
			var got []wireFrame
			slots := make([]*vswitch.Frame, 8)
			for len(got) < len(tt.want) {
				for i := range slots {
					if slots[i] == nil {
						slots[i] = vswitch.NewFrame(vswitch.MaxFrameLen)
					}
				}
				n, err := b.ReadFrames(slots)
				if err != nil {
					t.Fatalf("ReadFrames: %v", err)
				}
				for _, f := range slots[:n] {
					got = append(got, wireFrame{Hdr: f.Hdr, Data: string(f.Data)})
					f.DecRef()
				}
				clear(slots[:n])
			}
			for _, f := range slots {
				if f != nil {
					f.DecRef()
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("frames read (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTAPCloseEndsRead(t *testing.T) {
	a, _ := tapPair(t, true)
	errc := make(chan error, 1)
	slots := []*vswitch.Frame{vswitch.NewFrame(vswitch.MaxFrameLen)}
	go func() {
		_, err := a.ReadFrames(slots)
		errc <- err
	}()
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadFrames after Close: %v, want net.ErrClosed", err)
	}
	if err := a.WriteFrames(slots); !errors.Is(err, net.ErrClosed) {
		t.Errorf("WriteFrames after Close: %v, want net.ErrClosed", err)
	}
	slots[0].DecRef()
}

// TestTAPAllocs checks that writing and reading a frame allocates nothing.
func TestTAPAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	a, b := tapPair(t, true)
	out := []*vswitch.Frame{vswitch.NewFrame(1500)}
	in := []*vswitch.Frame{vswitch.NewFrame(vswitch.MaxFrameLen)}
	defer out[0].DecRef()
	defer in[0].DecRef()
	allocs := testing.AllocsPerRun(100, func() {
		if err := a.WriteFrames(out); err != nil {
			t.Fatal(err)
		}
		in[0].Resize(in[0].Cap())
		if _, err := b.ReadFrames(in); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame written and read, want 0", allocs)
	}
}
