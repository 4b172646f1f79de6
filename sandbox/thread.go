package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// thread is what the bypass supervisor needs of a thread that stopped in
// connect: a pidfd to take its socket through, and its process's epoll
// sets, to see whether one watches the socket. Looking for the epoll sets
// means a kcmp for every fd the process has, some microseconds each, so a
// thread's are kept for epollRescan and only those are checked meanwhile.
// An epoll set the thread makes in that window and gives a socket before
// connecting it goes unseen, and the process would wait for events that
// never come. Programs that add sockets before connecting (nginx, Envoy,
// Netty) make their sets when they start, long before.
//
// Only threads with a pidfd of their own (PIDFD_THREAD, Linux 6.9) are
// kept: the pidfd says when the thread is gone, and with it the number it
// is kept under. On older kernels every connect opens and looks afresh.
type thread struct {
	pidfd    int
	kept     bool // in supervisor.threads; else done closes pidfd
	epolls   []int
	epollsAt time.Time // zero: never looked
}

const (
	// epollRescan is how long a thread's epoll sets are trusted: a
	// rescan of a 40-fd process costs about 150µs.
	epollRescan = 100 * time.Millisecond
	// maxThreads bounds the threads kept; past it all are forgotten.
	maxThreads = 256
	// pidfdThread is PIDFD_THREAD (Linux 6.9): a pidfd for one thread.
	pidfdThread = unix.O_EXCL
)

// thread returns the state of thread tid. Call done when the pidfd is no
// longer needed.
func (s *supervisor) thread(tid int) (*thread, error) {
	if th := s.threads[tid]; th != nil {
		if alive(th.pidfd) {
			return th, nil
		}
		rawClose(th.pidfd)
		delete(s.threads, tid)
	}
	fd, err := rawPidfdOpen(tid, pidfdThread)
	if err == nil {
		if len(s.threads) >= maxThreads {
			s.forgetThreads()
		}
		th := &thread{pidfd: fd, kept: true}
		s.threads[tid] = th
		return th, nil
	}
	fd, err = processFD(tid)
	if err != nil {
		return nil, err
	}
	return &thread{pidfd: fd}, nil
}

// done releases a thread that is not kept.
func (th *thread) done() {
	if !th.kept {
		rawClose(th.pidfd)
		th.pidfd = -1
	}
}

// forgetThreads closes every kept thread's pidfd.
func (s *supervisor) forgetThreads() {
	for tid, th := range s.threads {
		rawClose(th.pidfd)
		delete(s.threads, tid)
	}
}

// watched reports whether an epoll set of thread tid's process watches
// the socket at fd.
func (th *thread) watched(tid, fd int) (bool, error) {
	if th.kept && !th.epollsAt.IsZero() && time.Since(th.epollsAt) < epollRescan {
		for _, efd := range th.epolls {
			if epollHas(tid, efd, fd) == 0 {
				return true, nil
			}
		}
		return false, nil
	}
	watched, epolls, err := scanEpolls(tid, fd)
	if err == nil && !watched {
		th.epolls, th.epollsAt = epolls, time.Now()
	}
	return watched, err
}

// alive reports whether the task behind pidfd still runs.
func alive(pidfd int) bool { return rawPoll(pidfd, unix.POLLIN) == 0 }

// processFD opens a pidfd whose fd table is that of thread tid, on a
// kernel without thread pidfds. A thread other than the process's first
// has no pidfd of its own there (ENOENT), so the process's is opened: the
// threads share their fds.
func processFD(tid int) (int, error) {
	fd, err := rawPidfdOpen(tid, 0)
	if err != unix.ENOENT {
		if err != nil {
			return -1, fmt.Errorf("pidfd_open: %w", err)
		}
		return fd, nil
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return -1, err
	}
	_, rest, ok := bytes.Cut(status, []byte("\nTgid:"))
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	tgid, err := strconv.Atoi(string(bytes.TrimSpace(line)))
	if !ok || err != nil {
		return -1, fmt.Errorf("no Tgid in /proc/%d/status", tid)
	}
	if fd, err = rawPidfdOpen(tgid, 0); err != nil {
		return -1, fmt.Errorf("pidfd_open: %w", err)
	}
	return fd, nil
}
