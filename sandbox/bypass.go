package sandbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Bypass hands a sandbox's own TCP and UDP connections to the host and the
// outside world host sockets in place of its sockets, so their bytes never
// cross the sandbox's TAP, the switch or the gateway's netstack: after the
// connect they move at the kernel's own loopback or network speed, with no
// daemon in the path. It is the method of rootless-containers'
// bypass4netns:
//
//   - The agent starts every command under a seccomp filter that stops
//     connect(2) and passes it to the daemon (seccomp.go).
//   - The daemon reads the address from the stopped process's memory. An
//     IPv4 address (or an IPv4-mapped IPv6 one) that the network would NAT
//     to the host (BypassRoute, nat.Outbound.Bypass) on an unbound TCP or
//     UDP socket of the sandbox's own namespace, which no epoll set
//     watches yet, is claimed; everything else (Unix sockets, addresses
//     on the network, bound sockets, ping sockets, nested namespaces'
//     sockets, sockets an epoll set would go on watching) continues
//     unchanged.
//   - For a claimed call the daemon makes a socket of the same kind in its
//     own namespace, copies the options a client sets before connecting,
//     connects it itself to where the NAT would have (the gateway's
//     address reaches the host's loopback), puts it in place of the
//     process's fd (SECCOMP_IOCTL_NOTIF_ADDFD) and answers the call with
//     the connect's result. The process's own connect never runs, so it
//     cannot swap the address after the daemon read it.
//
// What a process sees differently: getsockname and getpeername report the
// host's side (127.0.0.1 and the host port for the gateway's address), and
// the connection is not in the sandbox's netstat or tcpdump. Every
// connect(2) in the sandbox, including to Unix sockets, costs a round trip
// to the daemon, about as long as the connect itself on loopback.

// BypassRoute says where a sandbox's own connection to dst goes as a host
// socket (Spec.Bypass): the target to connect to, or false to leave the
// connect alone.
type BypassRoute func(dst netip.AddrPort) (target netip.AddrPort, ok bool)

// supervisor answers one sandbox's stopped connect calls.
type supervisor struct {
	f      *os.File // the listener, non-blocking, on the netpoller
	rc     syscall.RawConn
	route  BypassRoute
	logger *slog.Logger
	done   chan struct{} // closed when run returns

	// The sandbox's network namespace: sockets of namespaces nested
	// inside it are left alone. nsCookie is its SO_NETNS_COOKIE, learnt
	// from the first socket found in it (0 until then; run's alone).
	nsDev, nsIno uint64
	nsCookie     uint64

	threads map[int]*thread // run's alone (thread.go)
}

// startSupervisor serves listener (which it takes) until the sandbox has
// no task left or close is called.
func startSupervisor(listener *os.File, agentPid int, route BypassRoute, logger *slog.Logger) (*supervisor, error) {
	var ns unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(agentPid)+"/ns/net", &ns); err != nil {
		listener.Close()
		return nil, fmt.Errorf("bypass: the sandbox's network namespace: %w", err)
	}
	// os.NewFile puts an fd on the netpoller only if it is already
	// non-blocking; a received fd is not.
	fd, err := unix.FcntlInt(listener.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	listener.Close()
	if err != nil {
		return nil, fmt.Errorf("bypass listener: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bypass listener: %w", err)
	}
	f := os.NewFile(uintptr(fd), "seccomp-listener")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("bypass listener: %w", err)
	}
	s := &supervisor{f: f, rc: rc, route: route, logger: logger, done: make(chan struct{}), nsDev: ns.Dev, nsIno: ns.Ino, threads: make(map[int]*thread)}
	go s.run()
	return s, nil
}

// close stops serving and waits for the loop. Connects the loop handed to
// goroutines (blocking ones) end on their own: their answer finds no
// listener. Calls still stopped fail with ENOSYS, as the kernel answers
// when the listener is gone.
func (s *supervisor) close() {
	s.f.Close()
	<-s.done
}

// run receives stopped calls until the listener closes or reports that no
// task is left to stop.
func (s *supervisor) run() {
	defer close(s.done)
	defer s.forgetThreads()
	for {
		var n seccompNotif
		var recvErr error
		hup := false
		err := s.rc.Read(func(fd uintptr) bool {
			// RECV would block whatever O_NONBLOCK says; poll first so
			// that the netpoller does the waiting.
			revents := rawPoll(int(fd), unix.POLLIN)
			if revents == 0 {
				return false
			}
			if revents&unix.POLLIN == 0 {
				hup = true
				return true
			}
			_, recvErr = listenerIoctl(fd, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&n))
			return true
		})
		switch {
		case err != nil || hup:
			return
		case errors.Is(recvErr, errNotifGone), errors.Is(recvErr, unix.EINTR):
			continue
		case recvErr != nil:
			s.logger.Warn("bypass: reading stopped connects failed; the sandbox's connects will fail", "err", recvErr)
			return
		}
		s.handle(&n)
	}
}

// connectCall is a stopped connect the daemon carries out itself.
type connectCall struct {
	fd       int // the process's fd number
	domain   int
	typ      int
	proto    int
	target   netip.AddrPort
	nonblock bool
	cloexec  bool
	orig     int // the daemon's duplicate of the process's socket
}

// handle answers one stopped call.
func (s *supervisor) handle(n *seccompNotif) {
	c, err := s.claim(n)
	if err != nil {
		s.logger.Debug("bypass: connect left to the sandbox", "pid", n.Pid, "err", err)
	}
	if c == nil {
		s.respond(n.ID, 0, true)
		return
	}
	if c.nonblock {
		s.finish(n.ID, c)
		return
	}
	// A blocking connect may take as long as the destination does to
	// answer; the loop must not wait for it (waitConnected parks).
	go s.finish(n.ID, c)
}

// claim decides whether the daemon carries out n, and gathers what it
// needs to. A nil call means "continue"; the error says why, when the
// reason is worth a debug line.
func (s *supervisor) claim(n *seccompNotif) (*connectCall, error) {
	if n.Nr != unix.SYS_CONNECT {
		return nil, nil
	}
	fd, addrPtr, addrLen := int(int32(n.Args[0])), n.Args[1], n.Args[2]
	if addrLen < unix.SizeofSockaddrInet4 || fd < 0 {
		return nil, nil
	}
	var raw [unix.SizeofSockaddrInet6]byte
	size := min(int(addrLen), len(raw))
	if err := rawReadMem(int(n.Pid), uintptr(addrPtr), raw[:size]); err != nil {
		return nil, fmt.Errorf("read the address: %w", err)
	}
	family := int(binary.NativeEndian.Uint16(raw[0:2]))
	port := binary.BigEndian.Uint16(raw[2:4])
	var dst netip.Addr
	switch {
	case family == unix.AF_INET:
		dst = netip.AddrFrom4([4]byte(raw[4:8]))
	case family == unix.AF_INET6 && size >= 24: // SIN6_LEN_RFC2133: the kernel's minimum
		dst = netip.AddrFrom16([16]byte(raw[8:24]))
		if !dst.Is4In6() {
			return nil, nil // the network has no IPv6 to leave by
		}
		dst = dst.Unmap()
	default:
		return nil, nil
	}
	target, ok := s.route(netip.AddrPortFrom(dst, port))
	if !ok {
		return nil, nil
	}

	th, err := s.thread(int(n.Pid))
	if err != nil {
		return nil, err
	}
	orig, err := rawPidfdGetfd(th.pidfd, fd)
	th.done()
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd: %w", err)
	}
	c := &connectCall{fd: fd, target: target, orig: orig, domain: family}
	if err := s.inspect(c, int(n.Pid), th); err != nil {
		rawClose(orig)
		return nil, err
	}
	// Everything read so far was read from the process that is stopped,
	// not from one that took its pid after it died.
	id := n.ID
	if err := s.ioctl(seccompIoctlNotifIDValid, unsafe.Pointer(&id)); err != nil {
		rawClose(orig)
		return nil, err
	}
	return c, nil
}

// inspect checks that c.orig is a fresh TCP or UDP socket of the address's
// family, made in the sandbox's own namespace and watched by no epoll set,
// and reads its flags.
func (s *supervisor) inspect(c *connectCall, pid int, th *thread) error {
	if d, err := rawGetsockoptInt(c.orig, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || d != c.domain {
		return fmt.Errorf("not a socket of family %d (%d, %v)", c.domain, d, err)
	}
	var err error
	if c.typ, err = rawGetsockoptInt(c.orig, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return err
	}
	if c.proto, err = rawGetsockoptInt(c.orig, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
		return err
	}
	if !(c.typ == unix.SOCK_STREAM && c.proto == unix.IPPROTO_TCP) && !(c.typ == unix.SOCK_DGRAM && c.proto == unix.IPPROTO_UDP) {
		return errors.New("neither TCP nor UDP") // MPTCP, ping sockets, raw
	}
	if unbound, err := rawUnbound(c.orig); err != nil || !unbound {
		return fmt.Errorf("socket already bound (%v)", err)
	}
	// A namespace nested inside the sandbox (a container in it, ip netns)
	// routes by its own rules, which the network's policy knows nothing
	// of.
	if err := s.inSandboxNetns(c.orig); err != nil {
		return err
	}
	// An epoll set watching the socket (nginx adds its upstream sockets
	// before connecting) would go on watching the old socket, and the
	// process would never hear from the new one.
	if watched, err := th.watched(pid, c.fd); err != nil || watched {
		return fmt.Errorf("socket already in an epoll set (%v)", err)
	}
	fl, err := rawFcntl(c.orig, unix.F_GETFL)
	if err != nil {
		return err
	}
	c.nonblock = fl&unix.O_NONBLOCK != 0
	// Close-on-exec belongs to the process's fd table, not the socket:
	// only its fdinfo tells.
	c.cloexec, err = fdCloexec(pid, c.fd)
	return err
}

// inSandboxNetns checks that socket fd was made in the sandbox's own
// network namespace. Its SO_NETNS_COOKIE (Linux 5.14) answers in one
// getsockopt once the sandbox's is known; the namespace file's device and
// inode (SIOCGSKNS, three calls and a file) are the fallback and how the
// cookie is learnt.
func (s *supervisor) inSandboxNetns(fd int) error {
	var cookie uint64
	if _, err := rawGetsockopt(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE, unsafe.Pointer(&cookie), 8); err != nil {
		cookie = 0
	}
	if cookie != 0 && cookie == s.nsCookie {
		return nil
	}
	dev, ino, err := socketNetns(fd)
	if err != nil || dev != s.nsDev || ino != s.nsIno {
		return fmt.Errorf("socket of another network namespace (%v)", err)
	}
	s.nsCookie = cookie
	return nil
}

// fdCloexec reads whether pid's fd is close-on-exec from its fdinfo.
func fdCloexec(pid, fd int) (bool, error) {
	p := "/proc/" + strconv.Itoa(pid) + "/fdinfo/" + strconv.Itoa(fd)
	var buf [256]byte
	k, err := rawReadFile(p, buf[:])
	if err != nil {
		return false, err
	}
	for _, line := range bytes.Split(buf[:k], []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("flags:")); ok {
			flags, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 8, 64)
			if err != nil {
				return false, fmt.Errorf("%s: %w", p, err)
			}
			return flags&unix.O_CLOEXEC != 0, nil
		}
	}
	return false, fmt.Errorf("%s has no flags line", p)
}

// finish connects a host socket for c, installs it in the process and
// answers the call with the connect's result.
func (s *supervisor) finish(id uint64, c *connectCall) {
	defer rawClose(c.orig)
	// The daemon's socket is non-blocking whatever the process's is: a
	// blocking connect waits on the netpoller (waitConnected), not in a
	// thread of its own, so a sandbox cannot pile up daemon threads by
	// connecting to addresses that never answer.
	h, err := rawSocket(c.domain, c.typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, c.proto)
	if err != nil {
		s.logger.Debug("bypass: host socket", "err", err)
		s.respond(id, 0, true)
		return
	}
	defer rawClose(h)
	sendTimeout := copyOptions(c.orig, h, c.typ)
	if c.domain == unix.AF_INET6 {
		// The process's socket took IPv4-mapped addresses, so the
		// host's must too, whatever the host's bindv6only says.
		rawSetsockoptInt(h, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	errno := connectRaw(h, c.domain, c.target)
	if !c.nonblock {
		if errno == unix.EINPROGRESS {
			errno = waitConnected(h, sendTimeout)
		}
		if fl, err := rawFcntl(h, unix.F_GETFL); err == nil {
			unix.RawSyscall(unix.SYS_FCNTL, uintptr(h), unix.F_SETFL, uintptr(fl&^unix.O_NONBLOCK))
		}
	}
	// A failed connect leaves the process's socket as it was, as a failed
	// connect does; one in progress (non-blocking, or a blocking one past
	// SO_SNDTIMEO) is the process's to finish.
	if errno == 0 || errno == unix.EINPROGRESS {
		flags := uint32(0)
		if c.cloexec {
			flags = unix.O_CLOEXEC
		}
		add := seccompNotifAddfd{ID: id, Flags: unix.SECCOMP_ADDFD_FLAG_SETFD, Srcfd: uint32(h), Newfd: uint32(c.fd), NewfdFlags: flags}
		if err := s.ioctl(seccompIoctlNotifAddfd, unsafe.Pointer(&add)); err != nil {
			if !errors.Is(err, errNotifGone) {
				s.logger.Debug("bypass: install host socket", "err", err)
				s.respond(id, 0, true)
			}
			return
		}
	}
	s.respond(id, errno, false)
}

// connectRaw starts connecting the non-blocking socket fd to target. To
// loopback the call runs the whole handshake, some tens of microseconds;
// through unix.Connect the runtime's sysmon would often see it as a
// blocking call and hand the daemon's one P to another thread, a pair of
// context switches per connect. A raw call keeps the P.
func connectRaw(fd, domain int, target netip.AddrPort) unix.Errno {
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	var p unsafe.Pointer
	var l uintptr
	if domain == unix.AF_INET6 {
		sa6.Family = unix.AF_INET6
		sa6.Addr = target.Addr().As16() // IPv4-mapped
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa6.Port))[:], target.Port())
		p, l = unsafe.Pointer(&sa6), unix.SizeofSockaddrInet6
	} else {
		sa4.Family = unix.AF_INET
		sa4.Addr = target.Addr().As4()
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], target.Port())
		p, l = unsafe.Pointer(&sa4), unix.SizeofSockaddrInet4
	}
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(p), l)
	runtime.KeepAlive(&sa4)
	runtime.KeepAlive(&sa6)
	return errno
}

// waitConnected waits, on the netpoller, for the connect in progress on
// fd to end, at most timeout when that is not zero (then the answer is
// EINPROGRESS, as a blocking connect past its SO_SNDTIMEO returns).
func waitConnected(fd int, timeout time.Duration) unix.Errno {
	// A duplicate, for the netpoller to own and forget on Close; the
	// socket itself stays the caller's.
	d, err := rawFcntl(fd, unix.F_DUPFD_CLOEXEC)
	if err != nil {
		return unix.EIO
	}
	f := os.NewFile(uintptr(d), "bypass-connect")
	defer f.Close()
	if timeout > 0 {
		f.SetWriteDeadline(time.Now().Add(timeout))
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return unix.EIO
	}
	var result unix.Errno
	err = rc.Write(func(fd uintptr) bool {
		if v, err := rawGetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil || v != 0 {
			result = unix.Errno(v)
			if err != nil {
				result = err.(unix.Errno)
			}
			return true
		}
		// Writable with no error may still be a spurious wake: only a
		// peer says connected.
		var sa unix.RawSockaddrAny
		l := uint32(unix.SizeofSockaddrAny)
		_, _, e := unix.RawSyscall(unix.SYS_GETPEERNAME, fd, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
		return e == 0
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return unix.EINPROGRESS
	case err != nil:
		return unix.EIO
	}
	return result
}

// respond answers call id: with errno (0 for success), or by letting it
// run as the process made it.
func (s *supervisor) respond(id uint64, errno unix.Errno, cont bool) {
	r := seccompNotifResp{ID: id, Error: -int32(errno)}
	if cont {
		r.Flags = unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE
	}
	if err := s.ioctl(unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&r)); err != nil && !errors.Is(err, errNotifGone) && !errors.Is(err, os.ErrClosed) {
		s.logger.Debug("bypass: answer a stopped connect", "err", err)
	}
}

// ioctl runs a listener ioctl.
func (s *supervisor) ioctl(req uintptr, arg unsafe.Pointer) error {
	var ierr error
	if err := s.rc.Control(func(fd uintptr) { _, ierr = listenerIoctl(fd, req, arg) }); err != nil {
		return err
	}
	return ierr
}

// sockOpt is an integer option a client may set before connecting, and
// the value a new socket has.
type sockOpt struct {
	level, opt, def int
	stream, dgram   bool // which socket types it applies to
}

var copiedOptions = []sockOpt{
	{unix.SOL_SOCKET, unix.SO_REUSEADDR, 0, true, true},
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0, true, false},
	{unix.SOL_SOCKET, unix.SO_BROADCAST, 0, false, true},
	{unix.SOL_SOCKET, unix.SO_PRIORITY, 0, true, true},
	{unix.IPPROTO_TCP, unix.TCP_NODELAY, 0, true, false},
	{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 0, true, false},
}

// keepaliveOptions are copied only when keepalive is on; their defaults
// come from each namespace's sysctls, so they are copied as they are.
var keepaliveOptions = []int{unix.TCP_KEEPIDLE, unix.TCP_KEEPINTVL, unix.TCP_KEEPCNT}

// copyOptions gives h the options from orig that a client sets before
// connect and that change how the connection behaves. Failures are
// ignored: the connection works without them, as it would have with
// options the netstack path ignores. It returns orig's SO_SNDTIMEO, which
// bounds a blocking connect.
func copyOptions(orig, h, typ int) (sendTimeout time.Duration) {
	stream := typ == unix.SOCK_STREAM
	for _, o := range copiedOptions {
		if (stream && !o.stream) || (!stream && !o.dgram) {
			continue
		}
		if v, err := rawGetsockoptInt(orig, o.level, o.opt); err == nil && v != o.def {
			rawSetsockoptInt(h, o.level, o.opt, v)
			if o.opt == unix.SO_KEEPALIVE {
				for _, k := range keepaliveOptions {
					if v, err := rawGetsockoptInt(orig, unix.IPPROTO_TCP, k); err == nil {
						rawSetsockoptInt(h, unix.IPPROTO_TCP, k, v)
					}
				}
			}
		}
	}
	if stream {
		var l unix.Linger
		if _, err := rawGetsockopt(orig, unix.SOL_SOCKET, unix.SO_LINGER, unsafe.Pointer(&l), unix.SizeofLinger); err == nil && l.Onoff != 0 {
			rawSetsockopt(h, unix.SOL_SOCKET, unix.SO_LINGER, unsafe.Pointer(&l), unix.SizeofLinger)
		}
	}
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		var tv unix.Timeval
		if _, err := rawGetsockopt(orig, unix.SOL_SOCKET, opt, unsafe.Pointer(&tv), uint32(unsafe.Sizeof(tv))); err == nil && (tv.Sec != 0 || tv.Usec != 0) {
			rawSetsockopt(h, unix.SOL_SOCKET, opt, unsafe.Pointer(&tv), uint32(unsafe.Sizeof(tv)))
			if opt == unix.SO_SNDTIMEO {
				sendTimeout = time.Duration(tv.Nano())
			}
		}
	}
	return sendTimeout
}
