package sandbox

import (
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw system calls for the bypass supervisor's hot path, and for the
// agent's direct sockets. Each connect in a bypass sandbox costs the
// daemon some thirty short system calls. Made
// through x/sys/unix's wrappers, each enters the scheduler's syscall
// state; with the daemon's single P, sysmon then often hands the P to
// another thread mid-call, and the measured cost was about three context
// switches per connect. Raw calls keep the P: none of these can block.

// errnoErr turns a raw call's errno into an error, nil for 0.
func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func rawClose(fd int) { unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

func rawSocket(domain, typ, proto int) (int, error) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(domain), uintptr(typ), uintptr(proto))
	return int(fd), errnoErr(e)
}

func rawGetsockopt(fd, level, opt int, p unsafe.Pointer, size uint32) (uint32, error) {
	l := size
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	return l, errnoErr(e)
}

func rawSetsockopt(fd, level, opt int, p unsafe.Pointer, size uint32) error {
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(size), 0)
	return errnoErr(e)
}

func rawGetsockoptInt(fd, level, opt int) (int, error) {
	var v int32
	_, err := rawGetsockopt(fd, level, opt, unsafe.Pointer(&v), 4)
	return int(v), err
}

func rawSetsockoptInt(fd, level, opt, v int) error {
	x := int32(v)
	return rawSetsockopt(fd, level, opt, unsafe.Pointer(&x), 4)
}

// rawUnbound reports whether socket fd has no local address yet.
func rawUnbound(fd int) (bool, error) {
	var sa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return false, e
	}
	switch sa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		return a.Port == 0 && a.Addr == [4]byte{}, nil
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa))
		return a.Port == 0 && a.Addr == [16]byte{}, nil
	}
	return false, unix.EAFNOSUPPORT
}

func rawFcntl(fd, cmd int) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	return int(r), errnoErr(e)
}

func rawPidfdOpen(pid, flags int) (int, error) {
	fd, _, e := unix.RawSyscall(unix.SYS_PIDFD_OPEN, uintptr(pid), uintptr(flags), 0)
	return int(fd), errnoErr(e)
}

func rawPidfdGetfd(pidfd, fd int) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_PIDFD_GETFD, uintptr(pidfd), uintptr(fd), 0)
	return int(r), errnoErr(e)
}

// rawReadMem reads len(b) bytes at addr in process pid's memory.
func rawReadMem(pid int, addr uintptr, b []byte) error {
	local := unix.Iovec{Base: &b[0], Len: uint64(len(b))}
	remote := unix.RemoteIovec{Base: addr, Len: len(b)}
	n, _, e := unix.RawSyscall6(unix.SYS_PROCESS_VM_READV, uintptr(pid), uintptr(unsafe.Pointer(&local)), 1, uintptr(unsafe.Pointer(&remote)), 1, 0)
	if e != 0 {
		return e
	}
	if int(n) != len(b) {
		return unix.EFAULT
	}
	return nil
}

// rawReadFile reads up to len(b) bytes of a small file such as a procfs
// entry.
func rawReadFile(path string, b []byte) (int, error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return 0, err
	}
	cwd := unix.AT_FDCWD
	fd, _, e := unix.RawSyscall6(unix.SYS_OPENAT, uintptr(cwd), uintptr(unsafe.Pointer(p)), unix.O_RDONLY|unix.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	rawClose(int(fd))
	return int(n), errnoErr(e)
}

// kcmpEpollTFD is KCMP_EPOLL_TFD: is a file registered in an epoll set.
const kcmpEpollTFD = 7

// maxEpollScan bounds the fds scanEpolls looks through; a process with
// more is treated as if the socket were registered.
const maxEpollScan = 1024

// scanEpolls looks at every fd of thread tid's process and reports
// whether the socket at fd is registered, under that number, in an epoll
// set among them, and which fds are epoll sets.
func scanEpolls(tid, fd int) (watched bool, epolls []int, err error) {
	p, err := unix.BytePtrFromString("/proc/" + strconv.Itoa(tid) + "/fd")
	if err != nil {
		return false, nil, err
	}
	cwd := unix.AT_FDCWD
	dir, _, e := unix.RawSyscall6(unix.SYS_OPENAT, uintptr(cwd), uintptr(unsafe.Pointer(p)), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return false, nil, e
	}
	defer rawClose(int(dir))
	var buf [4096]byte
	seen := 0
	for {
		n, _, e := unix.RawSyscall(unix.SYS_GETDENTS64, dir, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		if e != 0 {
			return false, nil, e
		}
		if n == 0 {
			return false, epolls, nil
		}
		for off := 0; off < int(n); {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			reclen := int(*(*uint16)(unsafe.Pointer(&buf[off+16])))
			name := buf[off+19 : off+reclen]
			off += reclen
			efd, ok := atoi(name)
			if !ok || efd == fd {
				continue
			}
			if seen++; seen > maxEpollScan {
				return true, nil, nil
			}
			switch epollHas(tid, efd, fd) {
			case 0:
				return true, nil, nil
			case unix.ENOENT: // an epoll set, without the socket
				epolls = append(epolls, efd)
			}
		}
	}
}

// epollHas reports, as 0, that the socket at fd of thread tid's process is
// in the epoll set at efd; ENOENT means efd is an epoll set without it,
// other errnos that efd is no epoll set.
func epollHas(tid, efd, fd int) unix.Errno {
	slot := struct{ efd, tfd, toff uint32 }{uint32(efd), uint32(fd), 0}
	r, _, e := unix.RawSyscall6(unix.SYS_KCMP, uintptr(tid), uintptr(tid), kcmpEpollTFD, uintptr(fd), uintptr(unsafe.Pointer(&slot)), 0)
	if e == 0 && r != 0 {
		return unix.ENOENT // registered, but another file under that number
	}
	return e
}

// atoi parses a NUL-terminated decimal fd name.
func atoi(name []byte) (int, bool) {
	v := 0
	for i, c := range name {
		if c == 0 {
			return v, i > 0
		}
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, len(name) > 0
}

// socketNetns returns the device and inode of socket fd's network
// namespace.
func socketNetns(fd int) (dev uint64, ino uint64, err error) {
	ns, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGSKNS, 0)
	if e != 0 {
		return 0, 0, e
	}
	defer rawClose(int(ns))
	var st unix.Stat_t
	if _, _, e := unix.RawSyscall(unix.SYS_FSTAT, ns, uintptr(unsafe.Pointer(&st)), 0); e != 0 {
		return 0, 0, e
	}
	return st.Dev, st.Ino, nil
}

// rawPoll polls fd once without waiting and returns its revents, 0 when
// nothing is ready or the poll failed.
func rawPoll(fd int, events int16) int16 {
	p := unix.PollFd{Fd: int32(fd), Events: events}
	var ts unix.Timespec
	if k, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&p)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0); e != 0 || k == 0 {
		return 0
	}
	return p.Revents
}
