package engine

import "time"

// This file holds the JSON views that `usernet inspect` and `usernet
// network inspect` print. Field names, nesting and null-versus-empty
// choices follow Docker's (moby api/types) so that jq filters and scripts
// written for `docker inspect` work unchanged; fields Docker has that have
// no meaning here (images, graph drivers, mounts) are left out rather than
// filled with invented values.

// ContainerJSON is the `docker inspect` view of a sandbox.
type ContainerJSON struct {
	ID              string          `json:"Id"`
	Created         time.Time       `json:"Created"`
	Path            string          `json:"Path"`
	Args            []string        `json:"Args"`
	State           ContainerState  `json:"State"`
	ResolvConfPath  string          `json:"ResolvConfPath"`
	HostsPath       string          `json:"HostsPath"`
	LogPath         string          `json:"LogPath"`
	Name            string          `json:"Name"` // "/" + name, as Docker
	RestartCount    int             `json:"RestartCount"`
	HostConfig      HostConfig      `json:"HostConfig"`
	Config          ContainerConfig `json:"Config"`
	NetworkSettings NetworkSettings `json:"NetworkSettings"`
}

// ContainerState is the State object of ContainerJSON. Status is
// "created", "running" or "exited". FinishedAt is the zero time
// ("0001-01-01T00:00:00Z") until the command exits, as in Docker.
type ContainerState struct {
	Status     string    `json:"Status"`
	Running    bool      `json:"Running"`
	Paused     bool      `json:"Paused"`
	Restarting bool      `json:"Restarting"`
	OOMKilled  bool      `json:"OOMKilled"`
	Dead       bool      `json:"Dead"`
	Pid        int       `json:"Pid"`
	ExitCode   int       `json:"ExitCode"`
	Error      string    `json:"Error"`
	StartedAt  time.Time `json:"StartedAt"`
	FinishedAt time.Time `json:"FinishedAt"`
}

// HostBinding is one host side of a published port, with Docker's string
// fields: {"HostIp": "0.0.0.0", "HostPort": "8080"}.
type HostBinding struct {
	HostIP   string `json:"HostIp"`
	HostPort string `json:"HostPort"`
}

// PortMap maps "80/tcp" to its host bindings; a nil slice means exposed
// but not published (Docker prints null).
type PortMap map[string][]HostBinding

// HostConfig is the HostConfig object of ContainerJSON: what was asked
// for at run time. NetworkMode is "bridge", "host" or "none".
type HostConfig struct {
	NetworkMode     string   `json:"NetworkMode"`
	PortBindings    PortMap  `json:"PortBindings"`
	AutoRemove      bool     `json:"AutoRemove"`
	PublishAllPorts bool     `json:"PublishAllPorts"`
	DNS             []string `json:"Dns"`
	DNSOptions      []string `json:"DnsOptions"`
	DNSSearch       []string `json:"DnsSearch"`
	ExtraHosts      []string `json:"ExtraHosts"` // "name:ip", null when none
	// UsernetBypass is usernet's own: the sandbox runs with --bypass.
	UsernetBypass bool `json:"UsernetBypass,omitempty"`
}

// ContainerConfig is the Config object of ContainerJSON.
type ContainerConfig struct {
	Hostname     string              `json:"Hostname"`
	Domainname   string              `json:"Domainname"`
	User         string              `json:"User"`
	AttachStdin  bool                `json:"AttachStdin"`
	AttachStdout bool                `json:"AttachStdout"`
	AttachStderr bool                `json:"AttachStderr"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Tty          bool                `json:"Tty"`
	OpenStdin    bool                `json:"OpenStdin"`
	StdinOnce    bool                `json:"StdinOnce"`
	Env          []string            `json:"Env"`
	Cmd          []string            `json:"Cmd"`
	WorkingDir   string              `json:"WorkingDir"`
	Entrypoint   []string            `json:"Entrypoint"`
	Labels       map[string]string   `json:"Labels"`
}

// NetworkSettings is the NetworkSettings object of ContainerJSON. The
// top-level address fields repeat the default bridge network's endpoint,
// as Docker does; they are empty for host, none and user-defined networks
// (whose endpoint is in Networks only) and once the sandbox has exited.
type NetworkSettings struct {
	Bridge                 string                       `json:"Bridge"`
	SandboxID              string                       `json:"SandboxID"`
	SandboxKey             string                       `json:"SandboxKey"`
	HairpinMode            bool                         `json:"HairpinMode"`
	LinkLocalIPv6Address   string                       `json:"LinkLocalIPv6Address"`
	LinkLocalIPv6PrefixLen int                          `json:"LinkLocalIPv6PrefixLen"`
	Ports                  PortMap                      `json:"Ports"`
	SecondaryIPAddresses   []string                     `json:"SecondaryIPAddresses"`
	SecondaryIPv6Addresses []string                     `json:"SecondaryIPv6Addresses"`
	EndpointID             string                       `json:"EndpointID"`
	Gateway                string                       `json:"Gateway"`
	GlobalIPv6Address      string                       `json:"GlobalIPv6Address"`
	GlobalIPv6PrefixLen    int                          `json:"GlobalIPv6PrefixLen"`
	IPAddress              string                       `json:"IPAddress"`
	IPPrefixLen            int                          `json:"IPPrefixLen"`
	IPv6Gateway            string                       `json:"IPv6Gateway"`
	MacAddress             string                       `json:"MacAddress"`
	Networks               map[string]*EndpointSettings `json:"Networks"`
}

// EndpointIPAMConfig is an endpoint's requested static addresses (Docker's
// --ip). Always null for now: addresses come from IPAM.
type EndpointIPAMConfig struct {
	IPv4Address  string   `json:"IPv4Address,omitempty"`
	IPv6Address  string   `json:"IPv6Address,omitempty"`
	LinkLocalIPs []string `json:"LinkLocalIPs,omitempty"`
}

// EndpointSettings is one entry of NetworkSettings.Networks: the
// sandbox's endpoint on that network.
type EndpointSettings struct {
	IPAMConfig          *EndpointIPAMConfig `json:"IPAMConfig"`
	Links               []string            `json:"Links"`
	Aliases             []string            `json:"Aliases"`
	NetworkID           string              `json:"NetworkID"`
	EndpointID          string              `json:"EndpointID"`
	Gateway             string              `json:"Gateway"`
	IPAddress           string              `json:"IPAddress"`
	IPPrefixLen         int                 `json:"IPPrefixLen"`
	IPv6Gateway         string              `json:"IPv6Gateway"`
	GlobalIPv6Address   string              `json:"GlobalIPv6Address"`
	GlobalIPv6PrefixLen int                 `json:"GlobalIPv6PrefixLen"`
	MacAddress          string              `json:"MacAddress"`
	DriverOpts          map[string]string   `json:"DriverOpts"`
}

// NetworkResource is the `docker network inspect` view of a network.
type NetworkResource struct {
	Name       string                      `json:"Name"`
	ID         string                      `json:"Id"`
	Created    time.Time                   `json:"Created"`
	Scope      string                      `json:"Scope"`
	Driver     string                      `json:"Driver"`
	EnableIPv6 bool                        `json:"EnableIPv6"`
	IPAM       IPAM                        `json:"IPAM"`
	Internal   bool                        `json:"Internal"`
	Attachable bool                        `json:"Attachable"`
	Ingress    bool                        `json:"Ingress"`
	ConfigFrom ConfigReference             `json:"ConfigFrom"`
	ConfigOnly bool                        `json:"ConfigOnly"`
	Containers map[string]NetworkContainer `json:"Containers"`
	Options    map[string]string           `json:"Options"`
	Labels     map[string]string           `json:"Labels"`
}

// IPAM is a network's address management configuration.
type IPAM struct {
	Driver  string            `json:"Driver"`
	Options map[string]string `json:"Options"`
	Config  []IPAMConfig      `json:"Config"`
}

// IPAMConfig is one address pool of a network.
type IPAMConfig struct {
	Subnet  string `json:"Subnet,omitempty"`
	IPRange string `json:"IPRange,omitempty"`
	Gateway string `json:"Gateway,omitempty"`
}

// ConfigReference names the network a config-only network came from;
// always empty here.
type ConfigReference struct {
	Network string `json:"Network"`
}

// NetworkContainer is one running sandbox's endpoint in
// NetworkResource.Containers (keyed by sandbox ID).
type NetworkContainer struct {
	Name        string `json:"Name"`
	EndpointID  string `json:"EndpointID"`
	MacAddress  string `json:"MacAddress"`
	IPv4Address string `json:"IPv4Address"` // "172.17.0.2/16"
	IPv6Address string `json:"IPv6Address"`
}
