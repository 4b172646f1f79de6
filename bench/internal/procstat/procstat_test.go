package procstat

import (
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseRSS(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    uint64
		wantErr bool
	}{
		{"status", "Name:\tx\nVmHWM:\t  9000 kB\nVmRSS:\t  1234 kB\nThreads:\t3\n", 1234 * 1024, false},
		{"missing", "Name:\tkthreadd\n", 0, true},
		{"odd unit", "VmRSS:\t12 MB\n", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRSS([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseRSS() = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseCPU(t *testing.T) {
	// A command name with spaces and a parenthesis must not shift fields.
	stat := "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10\n"
	got, err := parseCPU([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want {
		t.Errorf("parseCPU() = %v, want %v", got, want)
	}
	if _, err := parseCPU([]byte("42 (x) S 1")); err == nil {
		t.Error("parseCPU(short) succeeded, want error")
	}
}

func TestParseCPUTimes(t *testing.T) {
	in := "cpu  100 0 50 800 50 0 0 0 7 7\ncpu0 1 2 3\n"
	idle, total, err := parseCPUTimes([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([2]uint64{850, 1000}, [2]uint64{idle, total}); diff != "" {
		t.Errorf("parseCPUTimes() mismatch (-want +got):\n%s", diff)
	}
}

func TestSelf(t *testing.T) {
	pid := os.Getpid()
	if rss, err := RSS(pid); err != nil || rss == 0 {
		t.Errorf("RSS(self) = %d, %v; want > 0", rss, err)
	}
	if _, err := CPU(pid); err != nil {
		t.Errorf("CPU(self): %v", err)
	}
	p := StartPeakRSS(pid, time.Millisecond)
	if peak := p.Stop(); peak == 0 {
		t.Error("PeakRSS(self) = 0, want > 0")
	}
}
