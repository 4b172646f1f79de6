package stack

// Reads and writes on the data path's fds without the scheduler's syscall
// bookkeeping.
//
// Every fd the data path reads or writes (TAPs, host sockets) is
// non-blocking: the call returns at once, with EAGAIN when it would block,
// and the waiting is left to Go's netpoller. syscall.Syscall still tells
// the scheduler that the call might block (entersyscall). When the daemon
// was idle just before, that wakes sysmon with a futex, and sysmon then
// polls every 20 µs on another CPU until the process is idle again. On a
// request/response flow the daemon goes idle between every two messages,
// so this happened on every round trip, on the CPU the guest and the host
// application needed. gVisor's rawfile package uses raw syscalls for the
// same kind of fd for the same reason.
//
// A raw syscall keeps its P for as long as the kernel takes, which for a
// writev into a TAP includes the guest's receive path: tens of
// microseconds, never a sleep.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawRead is read(2) on a non-blocking fd; b must not be empty.
func rawRead(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// rawWrite is write(2) on a non-blocking fd; b must not be empty.
func rawWrite(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// rawWritev is writev(2) on a non-blocking fd; iov must not be empty.
func rawWritev(fd int, iov []unix.Iovec) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// appendIovec appends an iovec for b, which must not be empty.
func appendIovec(iov []unix.Iovec, b []byte) []unix.Iovec {
	iov = append(iov, unix.Iovec{Base: &b[0]})
	iov[len(iov)-1].SetLen(len(b))
	return iov
}
