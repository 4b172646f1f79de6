package iperf

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Result
		wantErr bool
	}{
		{
			name: "client run",
			in:   `{"start":{},"end":{"sum_sent":{"bytes":100,"retransmits":3},"sum_received":{"seconds":10.01,"bytes":12500000000,"bits_per_second":9.99e9}}}`,
			want: Result{BitsPerSecond: 9.99e9, Bytes: 12500000000, Seconds: 10.01, Retransmits: 3},
		},
		{
			name: "reverse run without retransmit count",
			in:   `{"end":{"sum_sent":{"bytes":1},"sum_received":{"seconds":2,"bytes":2,"bits_per_second":8}}}`,
			want: Result{BitsPerSecond: 8, Bytes: 2, Seconds: 2, Retransmits: -1},
		},
		{name: "error field", in: `{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`, wantErr: true},
		{name: "no summary", in: `{"end":{}}`, wantErr: true},
		{name: "not json", in: `iperf3: error`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("Parse() error = %v, wantErr %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Parse() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClientArgs(t *testing.T) {
	got := ClientArgs("10.0.2.2", 5201, 10, 4, true)
	want := []string{"iperf3", "-c", "10.0.2.2", "-p", "5201", "-t", "10", "-J", "-P", "4", "-R"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ClientArgs() mismatch (-want +got):\n%s", diff)
	}
}
