package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/usernet/usernet/stack"
)

// setup prepares the agent's namespaces before the command starts, in
// this order:
//
//  1. Make every mount private, so nothing below leaks to the host.
//  2. Mount a /proc for the new PID namespace.
//  3. With a new network namespace: bring lo up, mount a /sys that shows
//     this namespace's devices and, for NetBridge, create, configure and
//     return the TAP.
//  4. Bind-mount the generated /etc/resolv.conf and /etc/hosts read-only.
//  5. Set the hostname.
//
// Failures that leave the sandbox usable (a /proc or /sys that cannot be
// remounted where the host hides parts of its own) become warnings.
func setup(cfg *agentConfig) (tap *os.File, warnings []string, err error) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, nil, fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		warnings = append(warnings, fmt.Sprintf("mount /proc for the sandbox's PID namespace: %v (ps shows host pids)", err))
	}
	if cfg.Net != NetHost {
		if w := remountSys(); w != "" {
			warnings = append(warnings, w)
		}
		if tap, err = setupNet(cfg); err != nil {
			return nil, nil, err
		}
	}
	if err := bindEtc(cfg); err != nil {
		if tap != nil {
			tap.Close()
		}
		return nil, nil, err
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			if tap != nil {
				tap.Close()
			}
			return nil, nil, fmt.Errorf("set hostname %q: %w", cfg.Hostname, err)
		}
	}
	return tap, warnings, nil
}

// setupNet brings lo up and, for NetBridge, creates and configures the
// TAP device, returning it.
func setupNet(cfg *agentConfig) (*os.File, error) {
	nl, err := dialRoute()
	if err != nil {
		return nil, err
	}
	defer nl.close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	if err := nl.setLink(lo.Index, nil, 0); err != nil {
		return nil, fmt.Errorf("bring lo up: %w", err)
	}
	if cfg.Net != NetBridge {
		return nil, nil
	}
	return createIface(nl, cfg.Iface)
}

// createIface creates the TAP device ifc describes in the agent's network
// namespace, configures it and returns it.
func createIface(nl *rtnl, ifc *Iface) (*os.File, error) {
	tap, err := stack.CreateTAP(ifc.Name, ifc.MTU)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("%w (is /dev/net/tun mode 0666?)", err)
		}
		return nil, err
	}
	if err := configureIface(nl, ifc); err != nil {
		tap.Close()
		return nil, err
	}
	return tap, nil
}

// configureIface sets ifc's MAC and MTU, brings it up, adds its address
// and the default route.
func configureIface(nl *rtnl, ifc *Iface) error {
	dev, err := net.InterfaceByName(ifc.Name)
	if err != nil {
		return fmt.Errorf("find %s: %w", ifc.Name, err)
	}
	if err := nl.setLink(dev.Index, ifc.MAC[:], ifc.MTU); err != nil {
		return fmt.Errorf("set %s MAC %v, MTU %d, up: %w", ifc.Name, ifc.MAC, ifc.MTU, err)
	}
	if err := nl.addAddr(dev.Index, ifc.Addr); err != nil {
		return fmt.Errorf("add address %v to %s: %w", ifc.Addr, ifc.Name, err)
	}
	if ifc.Gateway.IsValid() {
		if err := nl.addDefaultRoute(dev.Index, ifc.Gateway); err != nil {
			return fmt.Errorf("add default route via %v dev %s: %w", ifc.Gateway, ifc.Name, err)
		}
	}
	return nil
}

// remountSys mounts a sysfs on /sys so that /sys/class/net shows the
// sandbox's network namespace (a sysfs shows the namespace of whoever
// mounted it), keeping the host's cgroup tree visible beneath it. It
// returns a warning, or "".
func remountSys() string {
	// Clone the cgroup mount before it is covered, to put back after.
	cgroup, cerr := unix.OpenTree(unix.AT_FDCWD, "/sys/fs/cgroup", unix.OPEN_TREE_CLONE|unix.AT_RECURSIVE)
	if cerr == nil {
		defer unix.Close(cgroup)
	}
	if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return fmt.Sprintf("mount /sys for the sandbox's network namespace: %v (/sys/class/net shows the host's devices)", err)
	}
	if cerr == nil {
		if err := unix.MoveMount(cgroup, "", unix.AT_FDCWD, "/sys/fs/cgroup", unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Sprintf("keep /sys/fs/cgroup: %v", err)
		}
	}
	return ""
}

// scratchDir is where the agent briefly mounts a tmpfs to hold the
// generated /etc files. Any existing directory would do: the tmpfs is
// detached again before the command starts, and the bind mounts keep its
// files alive. A tmpfs rather than files in a host directory leaves
// nothing on the host to clean up and needs no locked mount flags kept.
const scratchDir = "/tmp"

// bindEtc bind-mounts cfg's resolv.conf and hosts over /etc read-only.
func bindEtc(cfg *agentConfig) error {
	files := []struct {
		data   []byte
		target string
	}{
		{cfg.ResolvConf, "/etc/resolv.conf"},
		{cfg.Hosts, "/etc/hosts"},
	}
	if cfg.ResolvConf == nil && cfg.Hosts == nil {
		return nil
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("tmpfs", scratchDir, "tmpfs", flags, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount tmpfs on %s for /etc files: %w", scratchDir, err)
	}
	defer unix.Unmount(scratchDir, unix.MNT_DETACH)
	for _, f := range files {
		if f.data == nil {
			continue
		}
		src := filepath.Join(scratchDir, filepath.Base(f.target))
		if err := os.WriteFile(src, f.data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", f.target, err)
		}
		if err := unix.Mount(src, f.target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount %s: %w", f.target, err)
		}
		if err := unix.Mount("", f.target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", f.target, err)
		}
	}
	return nil
}
