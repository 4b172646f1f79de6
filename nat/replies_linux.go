package nat

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Replies to outbound UDP flows (udp.go) arrive on the flows' host
// sockets. A goroutine per flow waiting in Read would cost a stack for
// every flow, most of them quiet (a DNS query, an NTP poll) until they
// expire. Instead each network has one replyPoller: an epoll set of its
// own holding every flow's host socket, level-triggered, which one
// goroutine waits on through the runtime's poller (an epoll set is itself
// pollable). When sockets are readable the goroutine reads their replies
// without waiting and sends each to the guest without waiting, so one
// slow flow cannot hold up the others; a reply the guest side has no room
// for is dropped, as a full socket buffer would drop it.
//
// Level-triggered, a socket left with replies (a flow sends at most
// replyBurst in a turn) is reported again by the next look (run says
// when one is needed).

// replyBurst bounds the replies one flow sends in a turn.
const replyBurst = 16

// pollRemoved is the pollID of a flow taken out of the set, or closed
// before it was put in: add then refuses it.
const pollRemoved = ^uint64(0)

// replyPoller is one network's set of flows waiting for replies. Its
// methods are safe for concurrent use; handle runs on run's goroutine,
// one flow at a time, may remove flows, and reports whether it read the
// flow's socket dry (false: it stopped at replyBurst).
type replyPoller struct {
	file   *os.File // the epoll set, non-blocking, in the runtime's poller
	rc     syscall.RawConn
	handle func(*udpFlow) (drained bool)

	// mu guards the fields below it.
	mu    sync.Mutex
	next  uint64              // the id the next flow gets
	flows map[uint64]*udpFlow // by the id in their epoll entry
}

// newReplyPoller makes an empty set whose ready flows run handle.
func newReplyPoller(handle func(*udpFlow) (drained bool)) (*replyPoller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile hands it to the runtime's poller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	file := os.NewFile(uintptr(fd), "udp-replies")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, err
	}
	return &replyPoller{file: file, rc: rc, handle: handle, flows: make(map[uint64]*udpFlow)}, nil
}

// add puts f's host socket (h) in the set. f.pollID is f's entry from then
// on; remove takes it out. A flow removed already (closed while it was
// being set up) is refused with net.ErrClosed.
func (p *replyPoller) add(f *udpFlow, h *hostIO) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f.pollID == pollRemoved {
		return net.ErrClosed
	}
	p.next++
	id := p.next
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEventID(&ev, id)
	var cerr error
	err := h.rc.Control(func(fd uintptr) {
		cerr = p.rc.Control(func(ep uintptr) {
			cerr = unix.EpollCtl(int(ep), unix.EPOLL_CTL_ADD, int(fd), &ev)
		})
	})
	if err = errors.Join(err, cerr); err != nil {
		return fmt.Errorf("watch the host socket for replies: %w", err)
	}
	f.pollID = id
	p.flows[id] = f
	return nil
}

// remove takes f out of the set, or keeps it from being put in; the
// caller closes its socket afterwards.
func (p *replyPoller) remove(f *udpFlow, h *hostIO) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := f.pollID
	f.pollID = pollRemoved
	if id == 0 || id == pollRemoved {
		return
	}
	delete(p.flows, id)
	// Out of the set now, not when the runtime gets round to closing the
	// socket: a readable socket nobody reads would be reported forever.
	h.rc.Control(func(fd uintptr) {
		p.rc.Control(func(ep uintptr) {
			unix.EpollCtl(int(ep), unix.EPOLL_CTL_DEL, int(fd), nil)
		})
	})
}

// len is how many flows are in the set.
func (p *replyPoller) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.flows)
}

// run hands ready flows to handle until close, or until the set fails,
// which it reports.
//
// The looking and the handling both happen inside one wait on the set
// (RawConn.Read's callback), so that the wait after a turn needs no look
// of its own: a turn that found fewer flows than it had room for, and
// left each of them with nothing queued, leaves the set empty, and
// whatever arrives afterwards wakes the runtime's poller. A flow stopped
// by replyBurst, or a full array, means another look at once. That saves
// an epoll_pwait per reply over looking until the set is empty.
func (p *replyPoller) run() error {
	var evs [64]unix.EpollEvent
	ready := make([]*udpFlow, 0, len(evs))
	var werr error
	err := p.rc.Read(func(ep uintptr) bool {
		for {
			k, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, ep, uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
			switch errno {
			case 0:
			case unix.EINTR:
				continue
			default:
				werr = os.NewSyscallError("epoll_pwait", errno)
				return true
			}
			n := int(k)
			if n == 0 {
				return false // wait for the runtime to say there is more
			}
			ready = ready[:0]
			p.mu.Lock()
			for i := range n {
				if f := p.flows[eventID(&evs[i])]; f != nil {
					ready = append(ready, f)
				}
			}
			p.mu.Unlock()
			again := n == len(evs)
			for _, f := range ready {
				if !p.handle(f) {
					again = true
				}
			}
			if !again {
				return false
			}
		}
	})
	if err != nil {
		return nil // closed
	}
	return werr
}

// close ends run (its caller waits for it) and closes the set.
func (p *replyPoller) close() {
	p.file.Close()
}

// setEventID and eventID keep a 64-bit id in an epoll entry's data (Fd and
// Pad are its two halves on every layout x/sys has).
func setEventID(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func eventID(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
