package nat

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pollRig is a replyPoller whose handle reads each ready flow's host
// socket as Outbound.replies does (at most replyBurst datagrams a turn)
// and records what it read, by flow.
type pollRig struct {
	p  *replyPoller
	mu sync.Mutex
	// got holds what each flow read, in order.
	got  map[*udpFlow][]string
	done chan error
}

func newPollRig(t *testing.T) *pollRig {
	t.Helper()
	r := &pollRig{got: make(map[*udpFlow][]string), done: make(chan error, 1)}
	p, err := newReplyPoller(r.handle)
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	go func() { r.done <- p.run() }()
	t.Cleanup(func() {
		p.close()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("run did not return after close")
		}
	})
	return r
}

func (r *pollRig) handle(f *udpFlow) bool {
	h := f.hostRW.(*hostIO)
	for range replyBurst {
		buf, n, err := h.readPooled(&udpBufs, false)
		if err != nil {
			if icmpReported(err) {
				continue
			}
			return true
		}
		r.mu.Lock()
		r.got[f] = append(r.got[f], string((*buf)[:n]))
		r.mu.Unlock()
		udpBufs.Put(buf)
	}
	return false
}

// read returns what f has read so far.
func (r *pollRig) read(f *udpFlow) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got[f]...)
}

// waitFor waits until f has read n datagrams.
func (r *pollRig) waitFor(t *testing.T, f *udpFlow, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.read(f)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("flow read %d datagrams, want %d", len(got), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// pollFlow makes a flow whose host socket is connected to a socket the
// test writes from (peer), with queued already waiting on it, and puts it
// in r's set.
func (r *pollRig) pollFlow(t *testing.T, queued ...string) (*udpFlow, *net.UDPConn) {
	t.Helper()
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	host, err := net.DialUDP("udp", nil, peer.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	h, err := newHostIO(host, false)
	if err != nil {
		t.Fatal(err)
	}
	f := &udpFlow{host: host, hostRW: h, poller: r.p}
	t.Cleanup(f.close)
	if len(queued) > 0 {
		sendTo(t, peer, f, queued...)
		time.Sleep(10 * time.Millisecond) // through loopback into the socket
	}
	if err := r.p.add(f, h); err != nil {
		t.Fatal(err)
	}
	return f, peer
}

// sendTo sends msgs from peer to f's host socket.
func sendTo(t *testing.T, peer *net.UDPConn, f *udpFlow, msgs ...string) {
	t.Helper()
	to := f.host.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, m := range msgs {
		if _, err := peer.WriteToUDPAddrPort([]byte(m), to); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplyPoller: one goroutine hears every flow in the set, each reply
// once and in order, including a flow with more than a turn's worth
// queued (the set is level-triggered, so what a turn leaves is reported
// again without a new datagram).
func TestReplyPoller(t *testing.T) {
	r := newPollRig(t)
	flows := make([]*udpFlow, 20)
	peers := make([]*net.UDPConn, len(flows))
	for i := range flows {
		flows[i], peers[i] = r.pollFlow(t)
	}
	for i, f := range flows {
		sendTo(t, peers[i], f, fmt.Sprint("reply ", i))
	}
	for i, f := range flows {
		got := r.waitFor(t, f, 1)
		if want := fmt.Sprint("reply ", i); len(got) != 1 || got[0] != want {
			t.Errorf("flow %d read %q, want [%q]", i, got, want)
		}
	}
	if n := r.p.len(); n != len(flows) {
		t.Errorf("set holds %d flows, want %d", n, len(flows))
	}

	// Three turns' worth and more, queued before the flow is watched: it
	// is heard only as long as the set keeps reporting it.
	var burst []string
	for i := range 3*replyBurst + 1 {
		burst = append(burst, fmt.Sprint("burst ", i))
	}
	busy, _ := r.pollFlow(t, burst...)
	got := r.waitFor(t, busy, len(burst))
	for i := range burst {
		if got[i] != burst[i] {
			t.Fatalf("burst read %q, want %q", got, burst)
		}
	}
}

// TestReplyPollerRemove: a removed flow is out of the set (its replies no
// longer read, its entry gone), and a flow removed before it was added is
// refused, so that a flow closed while it was set up cannot stay behind.
func TestReplyPollerRemove(t *testing.T) {
	r := newPollRig(t)
	f, peer := r.pollFlow(t)
	other, otherPeer := r.pollFlow(t)
	r.p.remove(f, f.hostRW.(*hostIO))
	if n := r.p.len(); n != 1 {
		t.Errorf("set holds %d flows after a remove, want 1", n)
	}
	sendTo(t, peer, f, "unheard")
	sendTo(t, otherPeer, other, "heard")
	r.waitFor(t, other, 1)
	// The other flow's reply was read after ours arrived: had ours been
	// watched it would have been read by now, or soon.
	time.Sleep(20 * time.Millisecond)
	if got := r.read(f); len(got) != 0 {
		t.Errorf("removed flow read %q", got)
	}

	late := &udpFlow{}
	r.p.remove(late, nil)
	host, err := net.DialUDP("udp", nil, peer.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	h, err := newHostIO(host, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.p.add(late, h); !isClosed(err) {
		t.Errorf("add after remove: %v, want net.ErrClosed", err)
	}
	if n := r.p.len(); n != 1 {
		t.Errorf("set holds %d flows, want 1", n)
	}
}

// TestReplyPollerICMP: a connected host socket's ICMP error (the peer's
// port closed) is read past, and the flow goes on hearing replies.
func TestReplyPollerICMP(t *testing.T) {
	r := newPollRig(t)
	f, peer := r.pollFlow(t)
	addr := peer.LocalAddr().(*net.UDPAddr)
	peer.Close()
	if _, err := f.host.Write([]byte("to nobody")); err != nil {
		t.Fatal(err)
	}
	// The port unreachable is queued on the socket now; a new peer on the
	// same port answers.
	time.Sleep(10 * time.Millisecond)
	again, err := net.ListenUDP("udp", addr)
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	defer again.Close()
	sendTo(t, again, f, "after the error")
	if got := r.waitFor(t, f, 1); got[0] != "after the error" {
		t.Errorf("read %q, want the reply after the error", got)
	}
}

// TestReplyPollerRemoveUnwatches: remove takes the socket out of the
// epoll set itself, at once: a readable socket left in it would be
// reported on every look, and the poller would spin.
func TestReplyPollerRemoveUnwatches(t *testing.T) {
	p, err := newReplyPoller(func(*udpFlow) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	// Not running: the test looks at the set itself.
	r := &pollRig{p: p}
	f, _ := r.pollFlow(t, "unread")
	ready := func() int {
		var evs [4]unix.EpollEvent
		var n int
		p.rc.Control(func(ep uintptr) {
			n, _ = unix.EpollWait(int(ep), evs[:], 0)
		})
		return n
	}
	if n := ready(); n != 1 {
		t.Fatalf("%d ready in the set with a datagram queued, want 1", n)
	}
	p.remove(f, f.hostRW.(*hostIO))
	if n := ready(); n != 0 {
		t.Errorf("%d ready in the set after remove, want 0", n)
	}
}
