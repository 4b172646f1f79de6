package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func startEcho(t *testing.T) (tcp, udp string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { ServeTCP(ln); done <- struct{}{} }()
	go func() { ServeUDP(pc); done <- struct{}{} }()
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		<-done
		<-done
	})
	return ln.Addr().String(), pc.LocalAddr().String()
}

func TestClients(t *testing.T) {
	tcp, udp := startEcho(t)
	ctx := context.Background()
	tests := []struct {
		name string
		run  func() (Result, error)
	}{
		{"tcprr", func() (Result, error) { return TCPRR(ctx, tcp, 50, 64) }},
		{"udprr", func() (Result, error) { return UDPRR(ctx, udp, 50, 64, time.Second) }},
		{"connrate", func() (Result, error) { return ConnRate(ctx, tcp, 50, 4), nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.run()
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			// Loopback may in theory lose a UDP datagram; none of these
			// runs may see errors.
			if got.N != 50 || got.Errors != 0 || got.N-got.Lost == 0 {
				t.Errorf("%s = %+v, want 50 attempts, no errors", tc.name, got)
			}
			if got.P50 <= 0 || got.P99 < got.P50 {
				t.Errorf("%s percentiles p50=%v p99=%v, want 0 < p50 <= p99", tc.name, got.P50, got.P99)
			}
		})
	}
}

func TestConnRateCountsErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every connection is refused
	got := ConnRate(context.Background(), addr, 10, 2)
	if got.Errors != 10 {
		t.Errorf("ConnRate to a closed port: errors = %d, want 10", got.Errors)
	}
}

func TestTCPRRFailsOnRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := TCPRR(context.Background(), addr, 10, 64); err == nil {
		t.Error("TCPRR to a closed port succeeded, want an error")
	}
}

func TestUDPRRGivesUp(t *testing.T) {
	// A socket that never answers: every request is lost, and the run
	// stops after giveUpAfter of them instead of waiting out all n.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got, err := UDPRR(context.Background(), pc.LocalAddr().String(), 1000, 64, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{N: giveUpAfter, Lost: giveUpAfter}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Result{}, "Seconds", "PerSecond")); diff != "" {
		t.Errorf("UDPRR to a silent socket mismatch (-want +got):\n%s", diff)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	got := []time.Duration{Percentile(d, 50), Percentile(d, 99), Percentile(d, 100), Percentile(d[:1], 99)}
	want := []time.Duration{50, 99, 100, 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Percentile mismatch (-want +got):\n%s", diff)
	}
}

func TestMainTCPRR(t *testing.T) {
	tcp, _ := startEcho(t)
	var out, errOut bytes.Buffer
	if code := Main([]string{"tcprr", "-addr", tcp, "-n", "10"}, &out, &errOut); code != 0 {
		t.Fatalf("Main(tcprr) = %d, stderr %q", code, errOut.String())
	}
	var r Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("Main(tcprr) output %q: %v", out.String(), err)
	}
	if r.N != 10 {
		t.Errorf("Main(tcprr) n = %d, want 10", r.N)
	}
	if code := Main([]string{"bogus"}, &out, &errOut); code != 2 {
		t.Errorf("Main(bogus) = %d, want 2", code)
	}
}
