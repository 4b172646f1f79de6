package main

import "testing"

func TestDaemonProcs(t *testing.T) {
	tests := []struct{ cpus, want int }{{1, 1}, {2, 1}, {3, 1}, {4, 2}, {16, 8}}
	for _, tt := range tests {
		if got := daemonProcs(tt.cpus); got != tt.want {
			t.Errorf("daemonProcs(%d) = %d, want %d", tt.cpus, got, tt.want)
		}
	}
}
