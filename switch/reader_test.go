package vswitch

import (
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// scriptPort is a Reader whose ReadFrames returns scripted results.
type scriptPort struct {
	mu      sync.Mutex
	offered []int // len(frames) of each ReadFrames call

	reads     chan readResult
	closeOnce sync.Once
	closed    chan struct{}
}

type readResult struct {
	frames [][]byte
	err    error
}

func newScriptPort() *scriptPort {
	return &scriptPort{reads: make(chan readResult), closed: make(chan struct{})}
}

func (p *scriptPort) ReadFrames(frames []*Frame) (int, error) {
	p.mu.Lock()
	p.offered = append(p.offered, len(frames))
	p.mu.Unlock()
	select {
	case r := <-p.reads:
		for i, d := range r.frames {
			frames[i].Resize(len(d))
			copy(frames[i].Data, d)
		}
		return len(r.frames), r.err
	case <-p.closed:
		return 0, net.ErrClosed
	}
}

func (p *scriptPort) WriteFrames([]*Frame) error { return nil }

func (p *scriptPort) Close() error {
	p.closeOnce.Do(func() { close(p.closed) })
	return nil
}

func TestReaderErrors(t *testing.T) {
	errIO := errors.New("input/output error")
	small := eth(Broadcast, macA, etherTypeARP, arp(macA, ipA, ipB))
	jumbo := eth(Broadcast, macA, etherTypeIPv4, ipv4(ipA, ipB, 17, pattern(9000)))
	tests := []struct {
		name     string
		script   []readResult
		want     [][]byte
		stops    bool // the reader gives up
		wantRead uint64
	}{
		{"transient error, then frames", []readResult{{nil, errIO}, {[][]byte{small, jumbo}, nil}}, [][]byte{small, jumbo}, false, 2},
		{"frames returned with an error are switched", []readResult{{[][]byte{small}, errIO}}, [][]byte{small}, false, 1},
		{"persistent errors stop the reader", repeat(readResult{nil, errIO}, maxReadFailures), nil, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			waitFor(t, "earlier tests' port goroutines to exit", func() bool { return portGoroutines() == 0 })
			s := New(Config{})
			defer s.Close()
			p := newScriptPort()
			in, err := s.Attach(p, PortConfig{Name: "scripted"})
			if err != nil {
				t.Fatal(err)
			}
			gate := newGatePort()
			close(gate.release)
			out, err := s.Attach(gate, PortConfig{Name: "out"})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tt.script {
				p.reads <- r
			}
			if tt.stops {
				// Only the two writers remain.
				waitFor(t, "the reader to stop", func() bool { return portGoroutines() == 2 })
			}
			waitFor(t, "delivery", func() bool { return out.Stats().TxFrames == uint64(len(tt.want)) })
			if diff := cmp.Diff(tt.want, gate.written()); diff != "" {
				t.Errorf("frames switched (-want +got):\n%s", diff)
			}
			if got := in.Stats().RxFrames; got != tt.wantRead {
				t.Errorf("RxFrames = %d, want %d", got, tt.wantRead)
			}
			in.Detach()
			waitFor(t, "the reader and writer to exit", func() bool { return portGoroutines() == 1 })
		})
	}
}

func repeat(r readResult, n int) []readResult {
	var rs []readResult
	for range n {
		rs = append(rs, r)
	}
	return rs
}

// failPort fails every WriteFrames.
type failPort struct{}

func (failPort) WriteFrames([]*Frame) error { return errors.New("no buffer space available") }
func (failPort) Close() error               { return nil }

func TestWriteErrorsCounted(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	in, err := s.Attach(sink{}, PortConfig{Name: "in"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Attach(failPort{}, PortConfig{Name: "failing"})
	if err != nil {
		t.Fatal(err)
	}
	in.Input([]*Frame{frameOf(numbered(1)), frameOf(numbered(2))})
	waitFor(t, "DropTxError", func() bool { return out.Stats().DropTxError == 2 })
	if got := out.Stats(); got.TxFrames != 0 || got.TxBytes != 0 {
		t.Errorf("failed writes counted as sent: %+v", got)
	}
}

func TestReaderBatchAdapts(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	p := newScriptPort()
	if _, err := s.Attach(p, PortConfig{Name: "scripted"}); err != nil {
		t.Fatal(err)
	}
	frames := func(n int) readResult {
		var r readResult
		for i := range n {
			r.frames = append(r.frames, numbered(i))
		}
		return r
	}
	for _, n := range []int{4, 8, 16, 32, 64, 64, 1, 1, 1, 1, 1} {
		p.reads <- frames(n)
	}
	offered := func() []int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return append([]int(nil), p.offered...)
	}
	waitFor(t, "the next read", func() bool { return len(offered()) == 12 })
	want := []int{4, 8, 16, 32, 64, 64, 64, 32, 16, 8, 4, 4}
	if diff := cmp.Diff(want, offered()); diff != "" {
		t.Errorf("frames offered to ReadFrames (-want +got):\n%s", diff)
	}
}
