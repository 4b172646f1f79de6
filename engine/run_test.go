package engine

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDescribeBinding(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		b    PortBinding
		want string
	}{
		{PortBinding{ContainerPort: 80}, "80"},
		{PortBinding{HostPort: 8080, ContainerPort: 80}, "8080:80"},
		{PortBinding{HostIP: lo, HostPort: 8080, ContainerPort: 80, Proto: "udp"}, "127.0.0.1:8080:80/udp"},
		{PortBinding{HostIP: lo, ContainerPort: 80}, "127.0.0.1::80"},
	}
	for _, tc := range tests {
		if got := describeBinding(tc.b); got != tc.want {
			t.Errorf("describeBinding(%+v) = %q, want %q", tc.b, got, tc.want)
		}
	}
}

func TestExecEnv(t *testing.T) {
	const path = "PATH=/bin"
	tests := []struct {
		name string
		spec runSpec
		cfg  ExecConfig
		want []string
	}{
		{
			name: "inherits the run-time environment",
			spec: runSpec{Hostname: "h", Env: []string{path, "A=1"}},
			want: []string{path, "A=1", "HOSTNAME=h"},
		},
		{
			name: "exec's entries override and add",
			spec: runSpec{Hostname: "h", Env: []string{path, "A=1", "B=2"}},
			cfg:  ExecConfig{Env: []string{"B=3", "C=4", "HOSTNAME=x"}},
			want: []string{path, "A=1", "B=3", "HOSTNAME=x", "C=4"},
		},
		{
			name: "run's terminal TERM is kept",
			spec: runSpec{Hostname: "h", Env: []string{path}, TTY: true},
			want: []string{path, "HOSTNAME=h", "TERM=xterm"},
		},
		{
			name: "exec's terminal adds TERM",
			spec: runSpec{Hostname: "h", Env: []string{path}},
			cfg:  ExecConfig{TTY: true},
			want: []string{path, "HOSTNAME=h", "TERM=xterm"},
		},
		{
			name: "exec's TERM wins over the terminal default",
			spec: runSpec{Hostname: "h", Env: []string{path}},
			cfg:  ExecConfig{TTY: true, Env: []string{"TERM=vt100"}},
			want: []string{path, "HOSTNAME=h", "TERM=vt100"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, execEnv(tc.spec, tc.cfg)); diff != "" {
				t.Errorf("execEnv (-want +got):\n%s", diff)
			}
		})
	}
}
