package sandbox

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel side of bypass (bypass.go): a seccomp filter that stops every
// connect(2) of the sandbox's commands and hands it to a supervisor, the
// daemon, through a listener fd (seccomp_unotify(2)).

// The ioctls on a listener that x/sys does not name.
const (
	seccompIoctlNotifIDValid = 0x40082102 // SECCOMP_IOCTL_NOTIF_ID_VALID: _IOW('!', 2, __u64)
	seccompIoctlNotifAddfd   = 0x40182103 // SECCOMP_IOCTL_NOTIF_ADDFD: _IOW('!', 3, struct seccomp_notif_addfd)
)

// seccompNotif is struct seccomp_notif: one stopped system call.
type seccompNotif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Nr    int32
	Arch  uint32
	IP    uint64
	Args  [6]uint64
}

// seccompNotifResp is struct seccomp_notif_resp: the answer to one.
type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// seccompNotifAddfd is struct seccomp_notif_addfd: an fd to install in
// the stopped task.
type seccompNotifAddfd struct {
	ID         uint64
	Flags      uint32
	Srcfd      uint32
	Newfd      uint32
	NewfdFlags uint32
}

// auditArch is the AUDIT_ARCH_* value of the architecture the agent was
// built for: the filter passes system calls made under any other ABI
// (x32, 32-bit compat), whose numbers mean something else.
func auditArch() (uint32, error) {
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64, nil
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64, nil
	case "riscv64":
		return unix.AUDIT_ARCH_RISCV64, nil
	case "ppc64le":
		return unix.AUDIT_ARCH_PPC64LE, nil
	case "s390x":
		return unix.AUDIT_ARCH_S390X, nil
	case "loong64":
		return unix.AUDIT_ARCH_LOONGARCH64, nil
	}
	return 0, fmt.Errorf("no seccomp architecture known for %s", runtime.GOARCH)
}

// connectFilter is the classic BPF program: connect(2) under the native
// ABI goes to the supervisor, everything else runs.
func connectFilter() ([]unix.SockFilter, error) {
	arch, err := auditArch()
	if err != nil {
		return nil, err
	}
	const (
		ldAbs = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		// Offsets in struct seccomp_data.
		offNr   = 0
		offArch = 4
	)
	return []unix.SockFilter{
		{Code: ldAbs, K: offArch},
		{Code: jeq, K: arch, Jt: 0, Jf: 2}, // another ABI: allow
		{Code: ldAbs, K: offNr},
		{Code: jeq, K: unix.SYS_CONNECT, Jt: 1, Jf: 0},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		{Code: ret, K: unix.SECCOMP_RET_USER_NOTIF},
	}, nil
}

// installConnectFilter puts the filter on the calling thread, which must
// stay locked to its goroutine from now on: the filter is inherited by
// every process forked from this thread, and by no other thread of the
// agent. It returns the listener. The agent is root in its user namespace,
// so the filter needs no PR_SET_NO_NEW_PRIVS, which would stop setuid and
// file-capability programs inside from gaining their privileges.
func installConnectFilter() (*os.File, error) {
	prog, err := connectFilter()
	if err != nil {
		return nil, err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	fd, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return nil, fmt.Errorf("seccomp user notification (Linux 5.9 or later): %w", errno)
	}
	unix.CloseOnExec(int(fd))
	return os.NewFile(fd, "seccomp-listener"), nil
}

// errNotifGone: the stopped task went away or was interrupted by a
// signal before it was answered; there is no one left to answer.
var errNotifGone = errors.New("trapped system call no longer waiting")

// listenerIoctl runs one ioctl on a listener fd, mapping ENOENT (the
// notification is gone) to errNotifGone. None of the ioctls used waits,
// RECV included, as run calls it only once poll says a call is pending.
func listenerIoctl(fd uintptr, req uintptr, arg unsafe.Pointer) (int, error) {
	r, _, errno := unix.RawSyscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	switch errno {
	case 0:
		return int(r), nil
	case unix.ENOENT:
		return 0, errNotifGone
	}
	return 0, errno
}

// checkListener checks that f, which the agent sent as its bypass
// listener, is one.
func checkListener(f *os.File) error {
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("bypass listener: %w", err)
	}
	if link != "anon_inode:seccomp notify" {
		return fmt.Errorf("agent sent %q as its bypass listener", link)
	}
	return nil
}
