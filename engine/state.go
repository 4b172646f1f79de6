package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// network is a network's configuration and, for bridge networks, its
// address allocator and data path. rec and the pointers are set once in
// newEngine; ipam is guarded by Engine.mu; br is safe for concurrent use.
type network struct {
	rec  networkRecord
	ipam *ipam  // nil for host and none
	br   bridge // nil for host and none
}

// container is a sandbox: its persisted record plus, while it runs, the
// handles on its process and data path.
type container struct {
	rec containerRecord // guarded by Engine.mu
	net *network        // the network it was started on

	// Set by Run before the container is published in Engine.containers
	// and never changed afterwards; nil for records restored from disk.
	proc   sandboxProcess
	detach func() // removes the switch port; nil unless bridge

	// done is closed once the command has exited and the sandbox's address
	// and ports are released (already closed for restored records).
	done chan struct{}
}

// running reports whether c's command has not exited yet.
func (c *container) running() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// tombstones remember the exit codes of the most recent auto-removed
// sandboxes, so that a foreground `run --rm` can still Wait for a command
// that exited (and was removed) before Wait was called.
type tombstones struct {
	codes map[string]int
	order []string
}

// maxTombstones bounds the memory tombstones keep; a client that has not
// called Wait after this many further removals has given up on it.
const maxTombstones = 256

func (t *tombstones) add(id string, code int) {
	if t.codes == nil {
		t.codes = make(map[string]int)
	}
	t.codes[id] = code
	t.order = append(t.order, id)
	if len(t.order) > maxTombstones {
		delete(t.codes, t.order[0])
		t.order = t.order[1:]
	}
}

// Default bridge network parameters, as Docker's.
var (
	defaultBridgeSubnet  = netip.MustParsePrefix("172.17.0.0/16")
	defaultBridgeGateway = netip.MustParseAddr("172.17.0.1")
)

// defaultMTU is the default bridge's MTU: with vnet-header TAPs 1500 costs
// little throughput (see NETSTACK.md R2) and keeps guests ordinary.
const defaultMTU = 1500

// exitCodeDaemonRestart is the exit code recorded for sandboxes whose
// agent died with a previous daemon, as Docker records 255 for containers
// it finds dead on restart.
const exitCodeDaemonRestart = 255

func newEngine(ctx context.Context, cfg Config, d deps) (*Engine, error) {
	if cfg.StateDir == "" {
		return nil, errorf(ErrInvalid, "engine: Config.StateDir is required")
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "sandboxes"), 0o700); err != nil {
		return nil, fmt.Errorf("engine: state dir: %w", err)
	}
	if cfg.HostResolvConf == "" {
		cfg.HostResolvConf = "/etc/resolv.conf"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Clock
	if now == nil {
		now = time.Now
	}
	st, err := openStore(filepath.Join(cfg.StateDir, "state.db"))
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	e := &Engine{
		cfg:        cfg,
		log:        log,
		now:        now,
		deps:       d,
		store:      st,
		networks:   make(map[string]*network),
		pending:    make(map[string]pendingNetwork),
		containers: make(map[string]*container),
		names:      make(map[string]string),
	}
	if err := e.restore(ctx); err != nil {
		for _, n := range e.networks {
			if n.br != nil {
				n.br.Close()
			}
		}
		st.Close()
		return nil, fmt.Errorf("engine: %w", err)
	}
	return e, nil
}

// defaultNetworks are the networks every daemon has, as Docker's bridge,
// host and none.
func defaultNetworks(now time.Time) []networkRecord {
	return []networkRecord{
		{
			Name: "bridge", Driver: "bridge", Created: now,
			Subnet: defaultBridgeSubnet, Gateway: defaultBridgeGateway, MTU: defaultMTU,
			Options: map[string]string{
				"com.docker.network.bridge.default_bridge":       "true",
				"com.docker.network.bridge.enable_icc":           "true",
				"com.docker.network.bridge.enable_ip_masquerade": "true",
				"com.docker.network.bridge.host_binding_ipv4":    "0.0.0.0",
				"com.docker.network.bridge.name":                 "usernet0",
				"com.docker.network.driver.mtu":                  fmt.Sprint(defaultMTU),
			},
		},
		{Name: "host", Driver: "host", Created: now},
		{Name: "none", Driver: "null", Created: now},
	}
}

// restore loads the database, creates the default networks on first use,
// brings up the bridges' data paths (user-defined networks' too), and settles sandboxes left running by
// a previous daemon: their agents died with it, so they are marked exited
// and their addresses released, all in one transaction.
func (e *Engine) restore(ctx context.Context) error {
	snap, err := e.store.load()
	if err != nil {
		return err
	}
	now := e.now().UTC()
	byName := make(map[string]networkRecord)
	for _, r := range snap.networks {
		byName[r.Name] = r
	}
	var created []networkRecord
	for _, r := range defaultNetworks(now) {
		if _, ok := byName[r.Name]; !ok {
			r.ID = newID()
			created = append(created, r)
			snap.networks = append(snap.networks, r)
		}
	}
	for _, r := range snap.networks {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := e.bringUp(r)
		if err != nil {
			return fmt.Errorf("network %s: %w", r.Name, err)
		}
		e.networks[r.ID] = n
	}

	var settled, removed []containerRecord
	for _, r := range snap.containers {
		if r.State.Status != "exited" {
			r.State = stateRecord{
				Status:     "exited",
				ExitCode:   exitCodeDaemonRestart,
				Error:      "agent lost: the daemon restarted while the sandbox was running",
				StartedAt:  r.State.StartedAt,
				FinishedAt: now,
			}
			r.Endpoint = nil
			if r.Spec.AutoRemove {
				removed = append(removed, r)
				continue
			}
			settled = append(settled, r)
		}
		n := e.networks[r.Spec.NetworkID]
		if n == nil {
			e.log.Warn("sandbox record names an unknown network; keeping it detached", "sandbox", r.Name, "network", r.Spec.NetworkID)
		}
		e.containers[r.ID] = &container{rec: r, net: n, done: closedChan()}
		e.names[r.Name] = r.ID
	}
	// No sandbox survives a restart, so no address stays allocated.
	err = e.store.update(func(t txn) error {
		for _, r := range created {
			if err := t.putNetwork(r); err != nil {
				return err
			}
		}
		for _, r := range settled {
			if err := t.putContainer(r); err != nil {
				return err
			}
		}
		for _, r := range removed {
			if err := t.deleteContainer(r.ID); err != nil {
				return err
			}
		}
		for netID, m := range snap.allocs {
			for a := range m {
				if err := t.release(netID, a); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("settle sandboxes of the previous daemon: %w", err)
	}
	for _, r := range removed {
		e.removeFiles(r.ID)
	}
	e.removeOrphanDirs()
	if len(settled)+len(removed) > 0 {
		e.log.Info("sandboxes of the previous daemon marked exited", "exited", len(settled), "removed", len(removed))
	}
	return nil
}

// closedChan returns a closed channel, the done of a sandbox that is not running.
func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// macFor derives the MAC of an IPv4 address as Docker does: 02:42 followed
// by the four address bytes.
func macFor(a netip.Addr) [6]byte {
	b := a.As4()
	return [6]byte{0x02, 0x42, b[0], b[1], b[2], b[3]}
}

// formatMAC formats m as "02:42:ac:11:00:02".
func formatMAC(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// sandboxDir is where a sandbox's generated files and log live.
func (e *Engine) sandboxDir(id string) string {
	return filepath.Join(e.cfg.StateDir, "sandboxes", id)
}

// removeFiles deletes a sandbox's directory, logging failures: the record
// is already gone, and a stray directory is harmless.
func (e *Engine) removeFiles(id string) {
	if err := os.RemoveAll(e.sandboxDir(id)); err != nil {
		e.log.Warn("remove sandbox files", "id", id, "err", err)
	}
}

// removeOrphanDirs deletes sandbox directories without a record: left by
// a daemon that crashed in the middle of a Run, before the record was
// committed.
func (e *Engine) removeOrphanDirs() {
	ents, err := os.ReadDir(filepath.Join(e.cfg.StateDir, "sandboxes"))
	if err != nil {
		e.log.Warn("list sandbox directories", "err", err)
		return
	}
	for _, ent := range ents {
		if _, ok := e.containers[ent.Name()]; !ok {
			e.log.Info("removing files of a sandbox that was never recorded", "id", ent.Name())
			e.removeFiles(ent.Name())
		}
	}
}

// errClosed is returned by calls made after Close began.
var errClosed = errors.New("engine: closed")

func (e *Engine) close() error {
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return nil
	}
	e.closing = true
	var live []*container
	for _, c := range e.containers {
		if c.running() {
			live = append(live, c)
		}
	}
	e.mu.Unlock()

	// Sandboxes die with the daemon anyway (their agent loses its control
	// channel); killing them here makes that prompt and lets finish tear
	// down their ports. finish writes nothing once closing is set, so the
	// records say "running" and the next New settles them like after a
	// crash.
	for _, c := range live {
		if err := c.proc.Kill(); err != nil {
			e.log.Debug("kill sandbox on close", "sandbox", c.rec.Name, "err", err)
		}
	}
	for _, c := range live {
		<-c.done
	}
	for _, n := range e.networks {
		if n.br != nil {
			n.br.Close()
		}
	}
	// Under the lock, so that no Remove is between its closing check and
	// its transaction.
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.store.Close(); err != nil {
		return fmt.Errorf("engine: close state: %w", err)
	}
	return nil
}

// lookupLocked resolves nameOrID to a sandbox. Callers hold e.mu.
func (e *Engine) lookupLocked(nameOrID string) (*container, error) {
	ids := make([]string, 0, len(e.containers))
	for id := range e.containers {
		ids = append(ids, id)
	}
	names := make(map[string]string, len(e.containers))
	for _, c := range e.containers {
		names[c.rec.Name] = c.rec.ID
	}
	id, err := resolve("sandbox", nameOrID, ids, names)
	if err != nil {
		return nil, err
	}
	return e.containers[id], nil
}

// lookup resolves nameOrID to a sandbox.
func (e *Engine) lookup(nameOrID string) (*container, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lookupLocked(nameOrID)
}
