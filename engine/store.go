package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The database (StateDir/state.db) has three top-level buckets:
//
//	networks    network ID -> networkRecord (JSON)
//	sandboxes   sandbox ID -> containerRecord (JSON)
//	ipam        network ID -> bucket: address ("172.17.0.2") -> endpoint owner (sandbox ID)
//
// Every change the engine acknowledges is one bbolt transaction touching
// all three as needed (a sandbox's record together with its address), so a
// crash never leaves an address allocated to a sandbox that does not exist
// or the other way round. JSON keeps the records readable with bbolt's CLI.
var (
	bucketNetworks  = []byte("networks")
	bucketSandboxes = []byte("sandboxes")
	bucketIPAM      = []byte("ipam")
)

// networkRecord is a network's persisted configuration. Fields added
// after the first release have zero values that keep the old meaning, so
// records written by an older daemon load unchanged.
type networkRecord struct {
	ID      string
	Name    string
	Driver  string // "bridge", "host" or "null"
	Created time.Time
	Subnet  netip.Prefix // invalid for host and none
	Gateway netip.Addr
	IPRange netip.Prefix // invalid: the whole subnet
	MTU     int
	// Internal networks have no NAT and no published ports.
	Internal bool
	// DisableICC: sandboxes reach only the gateway, not each other.
	DisableICC bool
	// Options are shown by inspect: the -o options as given (normalized)
	// for user-defined networks, Docker's defaults for the default bridge.
	Options map[string]string
	Labels  map[string]string
}

// runSpec is a sandbox's persisted configuration: its RunConfig without
// the files, after defaults were applied.
type runSpec struct {
	Hostname    string
	Args, Env   []string
	TTY         bool
	Interactive bool
	Detach      bool
	AutoRemove  bool
	Network     netMode
	NetworkID   string
	// NetworkName is the network's name when the sandbox was created
	// (HostConfig.NetworkMode, as Docker shows it); "" in records of an
	// older daemon, which ran on bridge, host or none only.
	NetworkName string
	Ports       []PortBinding
	PublishAll  bool
	Exposed     []PortProto // every exposed port: --expose and -p container ports
	DNS         []netip.Addr
	DNSSearch   []string
	ExtraHosts  []HostEntry
	Bypass      bool
}

// stateRecord is a sandbox's last known process state.
type stateRecord struct {
	Status     string // "created", "running", "exited"
	Pid        int
	ExitCode   int
	Error      string
	StartedAt  time.Time
	FinishedAt time.Time
}

// endpointRecord is a running sandbox's attachment to its network. It
// exists from a successful Run until the command exits.
type endpointRecord struct {
	ID        string
	NetworkID string
	Addr      netip.Addr // invalid for host and none
	MAC       string     // "02:42:ac:11:00:02"; empty for host and none
	Ports     []PortMapping
}

// containerRecord is a sandbox as persisted.
type containerRecord struct {
	ID             string
	Name           string
	Created        time.Time
	Spec           runSpec
	State          stateRecord
	Endpoint       *endpointRecord
	ResolvConfPath string
	HostsPath      string
	LogPath        string // the command's stdout (and stderr, before StderrLogPath)
	// StderrLogPath is the command's stderr; "" for a record from a daemon
	// that logged both streams to LogPath, whose log is then all stdout.
	StderrLogPath string
}

// store is the bbolt database. Its methods are safe for concurrent use
// (bbolt serializes writers), but the engine calls update with its mutex
// held so that the order of commits matches the order of in-memory changes.
type store struct {
	db *bolt.DB
}

// lockTimeout bounds the wait for the database's lock. bbolt's lock is a
// flock, which the kernel drops the moment its holder exits (even on
// SIGKILL), so a longer wait only helps a daemon still shutting down; the
// caller is a daemon starting up with a client waiting for it, which must
// learn fast that another daemon holds the state.
const lockTimeout = 500 * time.Millisecond

// openStore opens or creates the database at path. A lock held by another
// process is an ErrStateLocked error.
func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open state %s: %w", path, ErrStateLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketNetworks, bucketSandboxes, bucketIPAM} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init state %s: %w", path, err)
	}
	return &store{db: db}, nil
}

// Close closes the database.
func (s *store) Close() error { return s.db.Close() }

// snapshot is everything the database holds.
type snapshot struct {
	networks   []networkRecord
	containers []containerRecord
	allocs     map[string]map[netip.Addr]string // network ID -> address -> owner
}

// load reads the whole database.
func (s *store) load() (snapshot, error) {
	snap := snapshot{allocs: make(map[string]map[netip.Addr]string)}
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketNetworks).ForEach(func(k, v []byte) error {
			var r networkRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("network %s: %w", k, err)
			}
			snap.networks = append(snap.networks, r)
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketSandboxes).ForEach(func(k, v []byte) error {
			var r containerRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("sandbox %s: %w", k, err)
			}
			snap.containers = append(snap.containers, r)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketIPAM).ForEachBucket(func(netID []byte) error {
			m := make(map[netip.Addr]string)
			snap.allocs[string(netID)] = m
			return tx.Bucket(bucketIPAM).Bucket(netID).ForEach(func(k, v []byte) error {
				a, err := netip.ParseAddr(string(k))
				if err != nil {
					return fmt.Errorf("ipam %s: %w", netID, err)
				}
				m[a] = string(v)
				return nil
			})
		})
	})
	if err != nil {
		return snapshot{}, fmt.Errorf("load state: %w", err)
	}
	return snap, nil
}

// update runs fn in one read-write transaction: all of fn's changes are
// committed together or none are.
func (s *store) update(fn func(t txn) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(txn{tx}) })
}

// txn is one write transaction's view of the records.
type txn struct{ tx *bolt.Tx }

func (t txn) putNetwork(r networkRecord) error {
	return putJSON(t.tx.Bucket(bucketNetworks), r.ID, r)
}

// deleteNetwork forgets a network and its address allocations.
func (t txn) deleteNetwork(id string) error {
	if err := t.tx.Bucket(bucketNetworks).Delete([]byte(id)); err != nil {
		return err
	}
	if t.tx.Bucket(bucketIPAM).Bucket([]byte(id)) == nil {
		return nil
	}
	return t.tx.Bucket(bucketIPAM).DeleteBucket([]byte(id))
}

func (t txn) putContainer(r containerRecord) error {
	return putJSON(t.tx.Bucket(bucketSandboxes), r.ID, r)
}

func (t txn) deleteContainer(id string) error {
	return t.tx.Bucket(bucketSandboxes).Delete([]byte(id))
}

// allocate records that owner holds addr on network netID.
func (t txn) allocate(netID string, addr netip.Addr, owner string) error {
	b, err := t.tx.Bucket(bucketIPAM).CreateBucketIfNotExists([]byte(netID))
	if err != nil {
		return err
	}
	return b.Put([]byte(addr.String()), []byte(owner))
}

// release forgets addr's allocation on network netID.
func (t txn) release(netID string, addr netip.Addr) error {
	b := t.tx.Bucket(bucketIPAM).Bucket([]byte(netID))
	if b == nil {
		return nil
	}
	return b.Delete([]byte(addr.String()))
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}
