package vswitch

import (
	"sync"
	"sync/atomic"
	"time"
)

// DefaultAgingTime is how long a learned MAC stays in the forwarding
// database without being seen as a source (the IEEE 802.1D default).
const DefaultAgingTime = 300 * time.Second

// maxFDBEntries bounds the forwarding database so that a guest sending
// frames from random source MACs cannot grow it without limit. When it is
// full of live entries new MACs are not learned and frames to them flood,
// which is what a hardware switch with a full CAM table does.
const maxFDBEntries = 16384

// refreshGranularity is how stale an entry's timestamp may get before a
// frame from that MAC stores a new one. Aging is measured in minutes, so
// a second of slack is invisible, and skipping the store keeps the entry's
// cache line from bouncing between the cores that read it.
const refreshGranularity = int64(time.Second)

// fdbEntry is one learned MAC. Both fields are atomics so that learning a
// MAC that is already known (the common case: every frame a port sends)
// and a MAC moving to another port need only the read lock.
type fdbEntry struct {
	port atomic.Pointer[Attachment]
	seen atomic.Int64 // Clock().UnixNano() when last seen as a source
}

// fdb is the forwarding database: MAC -> port, with aging. Lookups and
// refreshes take the read lock; only a new MAC, a sweep of expired entries
// and forgetting a detached port take the write lock.
type fdb struct {
	aging int64 // nanoseconds
	max   int   // maxFDBEntries; smaller in tests

	mu      sync.RWMutex
	entries map[MAC]*fdbEntry
}

func newFDB(aging time.Duration) *fdb {
	return &fdb{aging: int64(aging), max: maxFDBEntries, entries: make(map[MAC]*fdbEntry)}
}

// lookup returns the live port for mac, or nil when mac is unknown or its
// entry has aged out (the caller floods).
func (d *fdb) lookup(mac MAC, now int64) *Attachment {
	d.mu.RLock()
	e := d.entries[mac]
	d.mu.RUnlock()
	if e == nil || now-e.seen.Load() > d.aging {
		return nil
	}
	return e.port.Load()
}

// learn records that mac was seen as a source on port a at now.
func (d *fdb) learn(mac MAC, a *Attachment, now int64) {
	d.mu.RLock()
	e := d.entries[mac]
	d.mu.RUnlock()
	if e != nil {
		if e.port.Load() != a {
			// The MAC moved (a VM migrated, a container restarted on
			// another port): later frames to it go to the new port.
			e.port.Store(a)
		}
		if now-e.seen.Load() >= refreshGranularity {
			e.seen.Store(now)
		}
		return
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if e := d.entries[mac]; e != nil { // learned by a concurrent Input
		e.port.Store(a)
		e.seen.Store(now)
		return
	}
	if len(d.entries) >= d.max {
		d.sweepLocked(now)
		if len(d.entries) >= d.max {
			return
		}
	}
	e = new(fdbEntry)
	e.port.Store(a)
	e.seen.Store(now)
	d.entries[mac] = e
}

// sweepLocked deletes the entries that have aged out. Expired entries are
// otherwise harmless (lookup ignores them), so sweeping happens only when
// the table fills or a port detaches.
func (d *fdb) sweepLocked(now int64) {
	for mac, e := range d.entries {
		if now-e.seen.Load() > d.aging {
			delete(d.entries, mac)
		}
	}
}

// forget deletes every entry that points at a, and the expired ones.
func (d *fdb) forget(a *Attachment, now int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for mac, e := range d.entries {
		if e.port.Load() == a || now-e.seen.Load() > d.aging {
			delete(d.entries, mac)
		}
	}
}

// len returns the number of entries, live or expired.
func (d *fdb) len() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.entries)
}
