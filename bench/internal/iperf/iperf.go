// Package iperf runs iperf3 clients and reads the figures the benchmarks
// report from iperf3's JSON output (-J).
package iperf

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Result is one iperf3 test as the receiver saw it.
type Result struct {
	// BitsPerSecond is the receiver's average rate over the test
	// (end.sum_received.bits_per_second), the figure iperf3 prints last.
	BitsPerSecond float64 `json:"bits_per_second"`
	// Bytes is what the receiver got.
	Bytes uint64 `json:"bytes"`
	// Seconds is the receiver's measured duration.
	Seconds float64 `json:"seconds"`
	// Retransmits is the sender's TCP retransmission count (-1 when the
	// sender is not on the client's host and iperf3 could not read it).
	Retransmits int `json:"retransmits"`
}

// Gbps returns BitsPerSecond in Gbit/s.
func (r Result) Gbps() float64 { return r.BitsPerSecond / 1e9 }

type report struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			Retransmits *int `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived *struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Bytes         uint64  `json:"bytes"`
			Seconds       float64 `json:"seconds"`
		} `json:"sum_received"`
	} `json:"end"`
}

// Parse decodes the JSON that `iperf3 -c ... -J` prints. An iperf3 run
// that failed (its "error" field is set, or it has no receiver summary)
// is an error, so a broken path never shows up as a rate of zero.
func Parse(out []byte) (Result, error) {
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		return Result{}, fmt.Errorf("iperf3 json: %w (output %q)", err, clip(out))
	}
	if r.Error != "" {
		return Result{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	s := r.End.SumReceived
	if s == nil || s.Seconds == 0 {
		return Result{}, errors.New("iperf3 json: no receiver summary (end.sum_received)")
	}
	res := Result{BitsPerSecond: s.BitsPerSecond, Bytes: s.Bytes, Seconds: s.Seconds, Retransmits: -1}
	if p := r.End.SumSent.Retransmits; p != nil {
		res.Retransmits = *p
	}
	return res, nil
}

// ClientArgs returns the iperf3 client command line for a TCP test of
// seconds to host:port with the given number of parallel streams;
// reverse makes the server send (-R).
func ClientArgs(host string, port, seconds, streams int, reverse bool) []string {
	args := []string{"iperf3", "-c", host, "-p", strconv.Itoa(port), "-t", strconv.Itoa(seconds), "-J"}
	if streams > 1 {
		args = append(args, "-P", strconv.Itoa(streams))
	}
	if reverse {
		args = append(args, "-R")
	}
	return args
}

func clip(b []byte) string {
	const max = 300
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
