// Package netns creates named network namespaces with ip(8) for the
// benchmarks, runs commands in them, and runs Go code on a thread that has
// entered one (to create a TAP device there). Everything here needs root;
// the product itself never does this (NETSTACK.md R5(c): the root-only
// fast path that the lab used).
package netns

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/sandbox/sandboxtest"
)

// NS is a named network namespace (/run/netns/Name) that this process
// created. Close deletes it; the kernel frees it once the last process in
// it has exited and the last fd to it is closed.
type NS struct {
	Name string
}

// Add creates the namespace name with its loopback up. A namespace of
// that name left behind by a crashed run is deleted first, so reruns work.
func Add(ctx context.Context, name string) (*NS, error) {
	if _, err := os.Stat("/run/netns/" + name); err == nil {
		_ = Run(ctx, "ip", "netns", "del", name)
	}
	if err := Run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("netns add %s: %w", name, err)
	}
	n := &NS{Name: name}
	if err := n.Run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	return n, nil
}

// Path returns the namespace's bind-mount path.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// Command returns a command that runs argv inside the namespace through
// `ip netns exec`.
func (n *NS) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, argv...)...)
}

// Run runs argv inside the namespace and returns an error carrying its
// output when it fails.
func (n *NS) Run(ctx context.Context, argv ...string) error {
	return run(n.Command(ctx, argv...))
}

// Output runs argv inside the namespace and returns its standard output.
func (n *NS) Output(ctx context.Context, argv ...string) ([]byte, error) {
	return output(n.Command(ctx, argv...))
}

// Do runs fn on an OS thread that has entered the namespace. fn must not
// start goroutines (they would run in the host namespace, or worse, on
// this thread's namespace by accident). Files fn opens stay bound to the
// namespace (a TAP device is created in it). If the thread cannot return
// to the original namespace it stays locked, and the Go runtime kills it
// when Do's goroutine exits rather than reuse it.
func (n *NS) Do(fn func() error) error {
	return sandboxtest.InNetns(n.Path(), fn)
}

// Close deletes the namespace.
func (n *NS) Close() error {
	if err := Run(context.Background(), "ip", "netns", "del", n.Name); err != nil {
		return fmt.Errorf("netns del %s: %w", n.Name, err)
	}
	return nil
}

// Run runs a host command and returns an error carrying its output when
// it fails.
func Run(ctx context.Context, argv ...string) error {
	return run(exec.CommandContext(ctx, argv[0], argv[1:]...))
}

func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func output(cmd *exec.Cmd) ([]byte, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// OpenPlainTAP creates a TAP called name with IFF_TAP|IFF_NO_PI (no
// virtio-net header) in the calling thread's network namespace: the kind
// of device gVisor's fdbased endpoint is built for. Call it inside Do.
// The fd is non-blocking; the caller owns it.
func OpenPlainTAP(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	return fd, nil
}
