package api

import (
	"errors"
	"net/http"
	"net/netip"

	"github.com/usernet/usernet/engine"
)

// RunRequest is the body of POST /v1/sandboxes. Its fields mean what the
// fields of engine.RunConfig of the same name mean; the standard streams
// are not part of it but passed as descriptors.
type RunRequest struct {
	Name        string             `json:",omitempty"`
	Hostname    string             `json:",omitempty"`
	Args        []string           `json:",omitempty"`
	Env         []string           `json:",omitempty"`
	TTY         bool               `json:",omitempty"`
	Interactive bool               `json:",omitempty"`
	Detach      bool               `json:",omitempty"`
	AutoRemove  bool               `json:",omitempty"`
	Network     string             `json:",omitempty"`
	Ports       []PortBinding      `json:",omitempty"`
	PublishAll  bool               `json:",omitempty"`
	Expose      []engine.PortProto `json:",omitempty"`
	DNS         []netip.Addr       `json:",omitempty"`
	DNSSearch   []string           `json:",omitempty"`
	ExtraHosts  []engine.HostEntry `json:",omitempty"`
	Bypass      bool               `json:",omitempty"`
	// Wait keeps the response open until the command exits and then sends
	// a WaitResponse. A client that waits this way cannot miss the exit
	// status of an --rm sandbox, and the daemon sees the client go away.
	Wait bool `json:",omitempty"`
}

// config converts r into the engine's form (without streams).
func (r *RunRequest) config() engine.RunConfig {
	return engine.RunConfig{
		Name: r.Name, Hostname: r.Hostname, Args: r.Args, Env: r.Env,
		TTY: r.TTY, Interactive: r.Interactive, Detach: r.Detach, AutoRemove: r.AutoRemove,
		Network: r.Network, Ports: r.Ports, PublishAll: r.PublishAll, Expose: r.Expose,
		DNS: r.DNS, DNSSearch: r.DNSSearch, ExtraHosts: r.ExtraHosts, Bypass: r.Bypass,
	}
}

// NetworkCreateRequest is the body of POST /v1/networks: `usernet network
// create`'s flags, with Docker's meanings (engine.NetworkCreateConfig).
// Zero addresses mean "not given".
type NetworkCreateRequest struct {
	Name     string            `json:",omitempty"`
	Driver   string            `json:",omitempty"`
	Subnet   netip.Prefix      `json:",omitzero"`
	Gateway  netip.Addr        `json:",omitzero"`
	IPRange  netip.Prefix      `json:",omitzero"`
	Internal bool              `json:",omitempty"`
	Options  map[string]string `json:",omitempty"`
	Labels   map[string]string `json:",omitempty"`
}

// config converts r into the engine's form.
func (r *NetworkCreateRequest) config() engine.NetworkCreateConfig {
	return engine.NetworkCreateConfig{
		Name: r.Name, Driver: r.Driver, Subnet: r.Subnet, Gateway: r.Gateway, IPRange: r.IPRange,
		Internal: r.Internal, Options: r.Options, Labels: r.Labels,
	}
}

// NetworkCreateResponse is the answer to POST /v1/networks (201), as
// Docker's: the new network's ID.
type NetworkCreateResponse struct {
	ID string `json:"Id"`
}

// NetworkPruneResponse is the answer to POST /v1/networks/prune: the names
// of the networks removed, as Docker's NetworksDeleted.
type NetworkPruneResponse struct {
	NetworksDeleted []string
}

// RunResponse is the first object of a run response.
type RunResponse struct {
	ID       string   `json:"Id"`
	Warnings []string `json:"Warnings"`
}

// WaitResponse reports how a command ended. Error is set when the daemon
// could not wait for it (the status code is then meaningless).
type WaitResponse struct {
	StatusCode int
	Error      string `json:",omitempty"`
}

// ExecRequest is the body of POST /v1/sandboxes/{name}/exec. Without
// Interactive (or TTY) the command's stdin is /dev/null even though the
// client passed its own.
type ExecRequest struct {
	Args        []string `json:",omitempty"`
	Env         []string `json:",omitempty"`
	WorkingDir  string   `json:",omitempty"`
	TTY         bool     `json:",omitempty"`
	Interactive bool     `json:",omitempty"`
}

// ExecResponse is the first object of an exec response; ExecID names the
// command for POST /v1/execs/{id}/kill while it runs.
type ExecResponse struct {
	ExecID string
}

// Error kinds, set in ErrorResponse.Kind where the CLI must tell them
// apart to choose its exit status (Docker's 127 and 126).
const (
	// KindCommandNotFound: the command does not exist in the sandbox.
	KindCommandNotFound = "command-not-found"
	// KindCommandNotExecutable: the command exists but cannot be run.
	KindCommandNotExecutable = "command-not-executable"
)

// ErrorResponse is the body of every non-2xx response.
type ErrorResponse struct {
	Message string `json:"message"`
	Kind    string `json:"kind,omitempty"`
}

// Error is a failed request as the client sees it: the daemon's message
// verbatim, the HTTP status and the kind. It matches engine.ErrNotFound,
// engine.ErrConflict and engine.ErrInvalid with errors.Is by status code,
// so callers test the same sentinels on both sides of the socket.
type Error struct {
	StatusCode int
	Message    string
	Kind       string
}

// Error returns the daemon's message.
func (e *Error) Error() string { return e.Message }

// Is reports whether target is the engine sentinel for e's status code.
func (e *Error) Is(target error) bool {
	switch e.StatusCode {
	case http.StatusNotFound:
		return target == engine.ErrNotFound
	case http.StatusConflict:
		return target == engine.ErrConflict
	case http.StatusBadRequest:
		return target == engine.ErrInvalid
	}
	return false
}

// errShutdown ends long-running responses when the server shuts down.
var errShutdown = errors.New("the daemon is shutting down")
