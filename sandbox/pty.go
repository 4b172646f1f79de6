package sandbox

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// A command run with TTY gets a pseudo-terminal of its own, allocated by
// the agent inside the sandbox, as docker does. The user's terminal cannot
// serve: it is already the controlling terminal of the user's login
// session, and taking it over (TIOCSCTTY with steal) needs root in the
// terminal's own user namespace. The path of the bytes:
//
//  1. openPTY opens /dev/ptmx of the sandbox's mount namespace (mounting
//     a devpts instance of the sandbox's own when the host's cannot be
//     used) and the replica that goes with it.
//  2. startCommand makes the replica the command's fds 0, 1 and 2 and its
//     controlling terminal (Setsid+Setctty: a new pty controls no session,
//     so no privilege is needed).
//  3. ptyRelay.run copies the user's terminal (the Stdin the daemon
//     passed) to the pty's main end, and the main end to Stdout. The
//     user's CLI has put its terminal in raw mode, so line editing, echo
//     and ^C are the sandbox pty's business.
//  4. ptyRelay.resize copies the user's window size to the pty at the
//     start and whenever SIGWINCH is forwarded; the kernel then signals
//     the pty's foreground process group itself.
//  5. When the command has exited, ptyRelay.stop drains what it wrote and
//     the agent reports the exit status only after that, so the user's
//     shell prompt follows the command's last output.

// devptsOptions mounts a devpts instance of the sandbox's own: ptmx usable
// by everyone (the host's may be mode 000 behind a /dev/ptmx device
// node), replicas for their owner and write for the group, as on the host.
// No gid=5: the host's tty group is not mapped in the user namespace.
const devptsOptions = "newinstance,ptmxmode=0666,mode=0620"

// openPTY returns the main end of a new pseudo-terminal (non-blocking,
// close-on-exec) and its replica (blocking, not the agent's controlling
// terminal). mounted records that the agent has already mounted its own
// devpts, so that it does so at most once.
func openPTY(mounted *bool) (ptm int, pts *os.File, err error) {
	ptm, pts, err = openPTYAt("/dev/ptmx")
	if err == nil || *mounted {
		return ptm, pts, err
	}
	if merr := mountDevpts(); merr != nil {
		return -1, nil, fmt.Errorf("%w; and a devpts of the sandbox's own: %w", err, merr)
	}
	*mounted = true
	return openPTYAt("/dev/ptmx")
}

// openPTYAt opens the pty multiplexer at path, unlocks the new pty and
// opens its replica.
func openPTYAt(path string) (int, *os.File, error) {
	ptm, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if err := unix.IoctlSetPointerInt(ptm, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(ptm)
		return -1, nil, &os.PathError{Op: "unlock pty", Path: path, Err: err}
	}
	// TIOCGPTPEER opens the replica through the main end's own devpts,
	// whatever is mounted on /dev/pts (Linux 4.13); the name is for error
	// messages only.
	pfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(ptm), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		unix.Close(ptm)
		return -1, nil, &os.PathError{Op: "open pty replica", Path: path, Err: errno}
	}
	n, err := unix.IoctlGetInt(ptm, unix.TIOCGPTN)
	name := "pty-replica"
	if err == nil {
		name = fmt.Sprintf("/dev/pts/%d", n)
	}
	return ptm, os.NewFile(pfd, name), nil
}

// mountDevpts mounts a new devpts instance on /dev/pts and binds its ptmx
// over /dev/ptmx, which root of the sandbox's user namespace may do in its
// own mount namespace. Only this sandbox sees the result.
func mountDevpts() error {
	if err := unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, devptsOptions); err != nil {
		return fmt.Errorf("mount devpts on /dev/pts: %w", err)
	}
	if err := unix.Mount("/dev/pts/ptmx", "/dev/ptmx", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind /dev/pts/ptmx over /dev/ptmx: %w", err)
	}
	return nil
}

// ptyRelay copies bytes between the user's terminal and the main end of a
// command's pty. It runs on a goroutine of its own (run); the agent's loop
// calls resize while it runs and stop once the command has exited, after
// which the relay's fds are closed.
type ptyRelay struct {
	ptm int // main end: non-blocking, owned
	// in and out are the Stdin and Stdout the daemon passed: the user's
	// terminal, shared with the CLI. They stay in blocking mode (switching
	// the shared file description to non-blocking would break the user's
	// shell after usernet exits), so in is polled before each read.
	in, out     *os.File
	inFD, outFD int
	// stopR and stopW are a pipe: closing stopW ends run.
	stopR, stopW int
	done         chan struct{} // closed when run returns
}

// newPTYRelay returns a relay for ptm that reads in and writes out, taking
// ownership of all three.
func newPTYRelay(ptm int, in, out *os.File) (*ptyRelay, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("pty relay pipe: %w", err)
	}
	return &ptyRelay{
		ptm: ptm, in: in, out: out, inFD: int(in.Fd()), outFD: int(out.Fd()),
		stopR: p[0], stopW: p[1], done: make(chan struct{}),
	}, nil
}

// relayBuf is the size of each read; a pty moves at most 4 KiB at a time
// anyway.
const relayBuf = 16 << 10

// run copies until stop. Input read from the user's terminal waits in
// pending until the pty takes it, and the terminal is not read meanwhile,
// so a command that does not read its input stalls only the user's
// typing, never its own output.
func (r *ptyRelay) run() {
	defer close(r.done)
	inFD, outFD := r.inFD, r.outFD
	inBuf, outBuf := make([]byte, relayBuf), make([]byte, relayBuf)
	var pending []byte
	inOpen, ptmOpen, outOK := true, true, true
	for {
		fds := []unix.PollFd{{Fd: int32(r.stopR), Events: unix.POLLIN}}
		ptmIdx, inIdx := -1, -1
		if ptmOpen {
			ev := int16(unix.POLLIN)
			if len(pending) > 0 {
				ev |= unix.POLLOUT
			}
			ptmIdx = len(fds)
			fds = append(fds, unix.PollFd{Fd: int32(r.ptm), Events: ev})
		}
		if inOpen && ptmOpen && len(pending) == 0 {
			inIdx = len(fds)
			fds = append(fds, unix.PollFd{Fd: int32(inFD), Events: unix.POLLIN})
		}
		if _, err := unix.Poll(fds, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			// Cannot happen with valid fds; relay nothing more, but
			// leave the fds to stop as its contract says.
			fmt.Fprintf(os.Stderr, "usernet sandbox agent: pty relay: poll: %v\n", err)
			var b [1]byte
			for {
				if _, err := unix.Read(r.stopR, b[:]); err != unix.EINTR {
					return
				}
			}
		}
		if fds[0].Revents != 0 {
			if ptmOpen {
				r.drain(outFD, outBuf, outOK)
			}
			return
		}
		if ptmIdx >= 0 && fds[ptmIdx].Revents != 0 {
			ev := fds[ptmIdx].Revents
			if ev&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0 {
				n, err := unix.Read(r.ptm, outBuf)
				if n > 0 && outOK {
					outOK = writeAll(outFD, outBuf[:n]) == nil
				}
				// EIO: every replica fd is closed (the command and its
				// children are gone); until stop there is nothing more.
				if n == 0 || (err != nil && err != unix.EAGAIN && err != unix.EINTR) {
					ptmOpen = false
					pending = nil
				}
			}
			if ptmOpen && ev&unix.POLLOUT != 0 && len(pending) > 0 {
				n, err := unix.Write(r.ptm, pending)
				if n > 0 {
					pending = pending[n:]
				}
				if err != nil && err != unix.EAGAIN && err != unix.EINTR {
					pending = nil
				}
			}
		}
		if inIdx >= 0 && fds[inIdx].Revents != 0 {
			n, err := unix.Read(inFD, inBuf)
			switch {
			case n > 0:
				pending = inBuf[:n]
			case err == unix.EAGAIN || err == unix.EINTR:
			default:
				// End of input (a hung-up terminal, or a stdin that is
				// no terminal at all): the command keeps its pty.
				inOpen = false
			}
		}
	}
}

// drain copies what the pty still holds to out, without waiting for more:
// a process the command left behind may keep the replica open forever.
// Reading the main end flushes the kernel's pending tty buffer first, so
// everything the command wrote before it exited is there.
func (r *ptyRelay) drain(outFD int, buf []byte, outOK bool) {
	for {
		n, err := unix.Read(r.ptm, buf)
		if n > 0 && outOK {
			outOK = writeAll(outFD, buf[:n]) == nil
		}
		if err == unix.EINTR {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
	}
}

// writeAll writes b to the blocking fd.
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if n > 0 {
			b = b[n:]
		}
		if err != nil && err != unix.EINTR {
			return err
		}
	}
	return nil
}

// resize copies the user's window size to the pty. The kernel sends
// SIGWINCH to the pty's foreground process group when the size changes.
// Stdin is asked first, then Stdout; when neither is a terminal the pty
// keeps its size.
func (r *ptyRelay) resize() error {
	ws, err := unix.IoctlGetWinsize(r.inFD, unix.TIOCGWINSZ)
	if err != nil {
		ws, err = unix.IoctlGetWinsize(r.outFD, unix.TIOCGWINSZ)
	}
	if err != nil {
		return nil
	}
	if err := unix.IoctlSetWinsize(r.ptm, unix.TIOCSWINSZ, ws); err != nil {
		return fmt.Errorf("set pty window size: %w", err)
	}
	return nil
}

// stop ends run, after it has drained the pty, and closes the relay's
// fds. It must be called exactly once, after run was started.
func (r *ptyRelay) stop() {
	unix.Close(r.stopW)
	r.stopW = -1
	<-r.done
	r.close()
}

// close releases the relay's fds; on its own, for a relay never run.
func (r *ptyRelay) close() {
	if r.stopW >= 0 {
		unix.Close(r.stopW)
	}
	unix.Close(r.stopR)
	unix.Close(r.ptm)
	r.in.Close()
	r.out.Close()
}
