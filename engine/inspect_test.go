package engine

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// decodeJSON turns JSON text into generic values, so that golden
// comparisons cover field names, nesting, and null versus empty.
func decodeJSON(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
	return v
}

var (
	goldenID      = strings.Repeat("a1", 32)
	goldenNetID   = strings.Repeat("b2", 32)
	goldenEPID    = strings.Repeat("c3", 32)
	goldenCreated = time.Date(2026, 11, 22, 16, 0, 0, 123456789, time.UTC)
	goldenStarted = time.Date(2026, 11, 22, 16, 0, 1, 0, time.UTC)
)

func goldenBridge() *network {
	return &network{rec: networkRecord{
		ID: goldenNetID, Name: "bridge", Driver: "bridge", Created: goldenCreated,
		Subnet: defaultBridgeSubnet, Gateway: defaultBridgeGateway, MTU: 1500,
		Options: defaultNetworks(goldenCreated)[0].Options,
	}}
}

func goldenRecord() containerRecord {
	return containerRecord{
		ID:      goldenID,
		Name:    "web",
		Created: goldenCreated,
		Spec: runSpec{
			Hostname: "a1a1a1a1a1a1",
			Args:     []string{"python3", "-m", "http.server", "80"},
			Env:      []string{defaultPath},
			Detach:   true,
			Network:  modeBridge,
			Ports: []PortBinding{
				{HostPort: 8080, ContainerPort: 80, Proto: "tcp"},
				{HostIP: netip.MustParseAddr("127.0.0.1"), ContainerPort: 53, Proto: "udp"},
			},
			Exposed:    []PortProto{{53, "udp"}, {80, "tcp"}, {443, "tcp"}},
			DNS:        addrs("192.0.2.53"),
			ExtraHosts: []HostEntry{{Host: "db", IP: netip.MustParseAddr("10.0.0.5")}},
		},
		State: stateRecord{Status: "running", Pid: 4242, StartedAt: goldenStarted},
		Endpoint: &endpointRecord{
			ID: goldenEPID, NetworkID: goldenNetID,
			Addr: netip.MustParseAddr("172.17.0.2"), MAC: "02:42:ac:11:00:02",
			Ports: []PortMapping{
				{ContainerPort: 80, Proto: "tcp", HostIP: netip.IPv4Unspecified(), HostPort: 8080},
				{ContainerPort: 53, Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 32768},
			},
		},
		ResolvConfPath: "/state/sandboxes/" + goldenID + "/resolv.conf",
		HostsPath:      "/state/sandboxes/" + goldenID + "/hosts",
		LogPath:        "/state/sandboxes/" + goldenID + "/output.log",
	}
}

// TestContainerJSONGolden pins the `docker inspect` shape: every field
// name, its nesting, and where Docker prints null rather than [] or {}.
func TestContainerJSONGolden(t *testing.T) {
	rec := goldenRecord()
	got, err := json.Marshal(containerJSON(&rec, goldenBridge()))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "Id": "` + goldenID + `",
  "Created": "2026-11-22T16:00:00.123456789Z",
  "Path": "python3",
  "Args": ["-m", "http.server", "80"],
  "State": {
    "Status": "running", "Running": true, "Paused": false, "Restarting": false,
    "OOMKilled": false, "Dead": false, "Pid": 4242, "ExitCode": 0, "Error": "",
    "StartedAt": "2026-11-22T16:00:01Z", "FinishedAt": "0001-01-01T00:00:00Z"
  },
  "ResolvConfPath": "/state/sandboxes/` + goldenID + `/resolv.conf",
  "HostsPath": "/state/sandboxes/` + goldenID + `/hosts",
  "LogPath": "/state/sandboxes/` + goldenID + `/output.log",
  "Name": "/web",
  "RestartCount": 0,
  "HostConfig": {
    "NetworkMode": "bridge",
    "PortBindings": {
      "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
      "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
    },
    "AutoRemove": false,
    "PublishAllPorts": false,
    "Dns": ["192.0.2.53"],
    "DnsOptions": [],
    "DnsSearch": [],
    "ExtraHosts": ["db:10.0.0.5"]
  },
  "Config": {
    "Hostname": "a1a1a1a1a1a1", "Domainname": "", "User": "",
    "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
    "ExposedPorts": {"53/udp": {}, "80/tcp": {}, "443/tcp": {}},
    "Tty": false, "OpenStdin": false, "StdinOnce": false,
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "Cmd": ["python3", "-m", "http.server", "80"],
    "WorkingDir": "", "Entrypoint": null, "Labels": {}
  },
  "NetworkSettings": {
    "Bridge": "", "SandboxID": "` + goldenID + `", "SandboxKey": "/proc/4242/ns/net",
    "HairpinMode": false, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
    "Ports": {
      "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
      "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}],
      "443/tcp": null
    },
    "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
    "EndpointID": "` + goldenEPID + `",
    "Gateway": "172.17.0.1", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
    "IPAddress": "172.17.0.2", "IPPrefixLen": 16, "IPv6Gateway": "",
    "MacAddress": "02:42:ac:11:00:02",
    "Networks": {
      "bridge": {
        "IPAMConfig": null, "Links": null, "Aliases": null,
        "NetworkID": "` + goldenNetID + `",
        "EndpointID": "` + goldenEPID + `",
        "Gateway": "172.17.0.1", "IPAddress": "172.17.0.2", "IPPrefixLen": 16,
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "MacAddress": "02:42:ac:11:00:02", "DriverOpts": null
      }
    }
  }
}`
	if diff := cmp.Diff(decodeJSON(t, []byte(want)), decodeJSON(t, got)); diff != "" {
		t.Errorf("inspect JSON (-want +got):\n%s", diff)
	}
}

// TestContainerJSONExited checks the view of an exited sandbox: Docker
// keeps the network entry but empties the endpoint and the ports.
func TestContainerJSONExited(t *testing.T) {
	rec := goldenRecord()
	rec.State = stateRecord{Status: "exited", ExitCode: 3, StartedAt: goldenStarted, FinishedAt: goldenStarted.Add(time.Minute)}
	rec.Endpoint = nil
	got, err := json.Marshal(containerJSON(&rec, goldenBridge()))
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		State           map[string]any
		NetworkSettings map[string]any
	}
	if err := json.Unmarshal(got, &j); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"Status": "exited", "Running": false, "Paused": false, "Restarting": false,
		"OOMKilled": false, "Dead": false, "Pid": 0.0, "ExitCode": 3.0, "Error": "",
		"StartedAt": "2026-11-22T16:00:01Z", "FinishedAt": "2026-11-22T16:01:01Z",
	}
	if diff := cmp.Diff(want, j.State); diff != "" {
		t.Errorf("State (-want +got):\n%s", diff)
	}
	ns := j.NetworkSettings
	if ns["IPAddress"] != "" || ns["SandboxKey"] != "" || len(ns["Ports"].(map[string]any)) != 0 {
		t.Errorf("exited NetworkSettings = %v: want no address, sandbox key or ports", ns)
	}
	bridge := ns["Networks"].(map[string]any)["bridge"].(map[string]any)
	if bridge["NetworkID"] != goldenNetID || bridge["EndpointID"] != "" || bridge["IPAddress"] != "" {
		t.Errorf("exited Networks.bridge = %v: want the network ID only", bridge)
	}
}

// TestNetworkJSONGolden pins the `docker network inspect` shape of the
// default bridge with one running sandbox.
func TestNetworkJSONGolden(t *testing.T) {
	n := goldenBridge()
	rec := goldenRecord()
	e := &Engine{
		networks:   map[string]*network{goldenNetID: n},
		containers: map[string]*container{goldenID: {rec: rec, net: n, done: make(chan struct{})}},
	}
	got, err := json.Marshal(e.networkJSONLocked(n))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "Name": "bridge",
  "Id": "` + goldenNetID + `",
  "Created": "2026-11-22T16:00:00.123456789Z",
  "Scope": "local",
  "Driver": "bridge",
  "EnableIPv6": false,
  "IPAM": {
    "Driver": "default",
    "Options": null,
    "Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]
  },
  "Internal": false,
  "Attachable": false,
  "Ingress": false,
  "ConfigFrom": {"Network": ""},
  "ConfigOnly": false,
  "Containers": {
    "` + goldenID + `": {
      "Name": "web",
      "EndpointID": "` + goldenEPID + `",
      "MacAddress": "02:42:ac:11:00:02",
      "IPv4Address": "172.17.0.2/16",
      "IPv6Address": ""
    }
  },
  "Options": {
    "com.docker.network.bridge.default_bridge": "true",
    "com.docker.network.bridge.enable_icc": "true",
    "com.docker.network.bridge.enable_ip_masquerade": "true",
    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
    "com.docker.network.bridge.name": "usernet0",
    "com.docker.network.driver.mtu": "1500"
  },
  "Labels": {}
}`
	if diff := cmp.Diff(decodeJSON(t, []byte(want)), decodeJSON(t, got)); diff != "" {
		t.Errorf("network inspect JSON (-want +got):\n%s", diff)
	}
}

func TestPortsText(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	any4 := netip.IPv4Unspecified()
	tests := []struct {
		name    string
		ports   []PortMapping
		exposed []PortProto
		want    string
	}{
		{
			name:    "golden sandbox",
			ports:   goldenRecord().Endpoint.Ports,
			exposed: goldenRecord().Spec.Exposed,
			want:    "443/tcp, 127.0.0.1:32768->53/udp, 0.0.0.0:8080->80/tcp",
		},
		{
			name: "same numbers merge into a range",
			ports: []PortMapping{
				{ContainerPort: 8001, Proto: "tcp", HostIP: any4, HostPort: 8001},
				{ContainerPort: 8000, Proto: "tcp", HostIP: any4, HostPort: 8000},
				{ContainerPort: 8002, Proto: "tcp", HostIP: any4, HostPort: 8002},
				{ContainerPort: 9000, Proto: "tcp", HostIP: any4, HostPort: 9000},
			},
			want: "0.0.0.0:8000-8002->8000-8002/tcp, 0.0.0.0:9000->9000/tcp",
		},
		{
			name:    "exposed ranges per protocol",
			exposed: []PortProto{{80, "tcp"}, {81, "tcp"}, {53, "udp"}, {54, "udp"}, {90, "tcp"}},
			// As docker ps: a group closed by a gap prints before those still open.
			want: "80-81/tcp, 53-54/udp, 90/tcp",
		},
		{
			name:  "published on loopback",
			ports: []PortMapping{{ContainerPort: 80, Proto: "tcp", HostIP: lo, HostPort: 80}},
			want:  "127.0.0.1:80->80/tcp",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := containerRecord{
				Spec:     runSpec{Network: modeBridge, Exposed: tc.exposed},
				Endpoint: &endpointRecord{Ports: tc.ports},
			}
			if got := portsText(&rec); got != tc.want {
				t.Errorf("portsText = %q, want %q", got, tc.want)
			}
		})
	}
	rec := goldenRecord()
	rec.Endpoint = nil
	if got := portsText(&rec); got != "" {
		t.Errorf("portsText of an exited sandbox = %q, want empty", got)
	}
}
