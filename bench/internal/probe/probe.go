// Package probe is the small client/server pair the benchmark harness
// runs on both sides of a path for the workloads iperf3 does not cover:
// TCP and UDP request/response latency and TCP connection rate. The same
// code runs on the host and inside namespaces and sandboxes (through the
// probe binary, or the harness re-executing itself as "probe"), and
// prints one JSON Result per run so the harness can read it back.
package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Result is the outcome of one client run.
type Result struct {
	// N is the number of round trips or connections attempted.
	N int `json:"n"`
	// Errors counts failed connections or round trips (dial errors,
	// resets, short reads); for UDP it also counts send errors.
	Errors int `json:"errors"`
	// Lost counts UDP requests whose reply did not arrive in time.
	Lost int `json:"lost"`
	// P50, P99 are latency percentiles in microseconds of the successful
	// round trips (for connection rate: of connect+echo+close).
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
	// Seconds is the wall time of the run; PerSecond is N/Seconds.
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
}

// ServeTCP accepts connections on ln and echoes every byte back until the
// peer closes, one goroutine per connection, until ln is closed.
func ServeTCP(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("probe: accept: %w", err)
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// ServeUDP echoes every datagram back to its sender until pc is closed.
func ServeUDP(pc net.PacketConn) error {
	buf := make([]byte, 65536)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("probe: udp read: %w", err)
		}
		_, _ = pc.WriteTo(buf[:n], addr)
	}
}

// TCPRR opens one connection to addr and makes n round trips of size
// bytes each (size >= 1), each waiting for its full echo before the next.
// A failed connection ends the run with an error; that is a broken path,
// not a measurement.
func TCPRR(ctx context.Context, addr string, n, size int) (Result, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Result{}, fmt.Errorf("probe: tcp rr: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	req := make([]byte, size)
	resp := make([]byte, size)
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for i := range n {
		binary.BigEndian.PutUint32(req[:min(size, 4)], uint32(i))
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			return Result{}, fmt.Errorf("probe: tcp rr: round trip %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return Result{}, fmt.Errorf("probe: tcp rr: round trip %d: %w", i, err)
		}
		lat = append(lat, time.Since(t0))
	}
	return summarize(n, 0, 0, lat, time.Since(start)), nil
}

// UDPRR sends n datagrams of size bytes (size >= 4) to addr one at a
// time, each carrying its sequence number, and waits up to timeout for
// the matching echo; a request without one counts as lost. Stale echoes
// of earlier requests are skipped. A path that answers none of the first
// giveUpAfter requests ends the run early (N is then the number sent):
// waiting out every timeout would measure nothing more.
func UDPRR(ctx context.Context, addr string, n, size int, timeout time.Duration) (Result, error) {
	size = max(size, 4)
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return Result{}, fmt.Errorf("probe: udp rr: %w", err)
	}
	defer c.Close()
	req := make([]byte, size)
	resp := make([]byte, 65536)
	lat := make([]time.Duration, 0, n)
	var errs, lost, sent int
	start := time.Now()
	for i := range n {
		if i >= giveUpAfter && len(lat) == 0 {
			break
		}
		sent++
		if ctx.Err() != nil {
			return Result{}, fmt.Errorf("probe: udp rr: %w", ctx.Err())
		}
		binary.BigEndian.PutUint32(req, uint32(i))
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			errs++
			continue
		}
		c.SetReadDeadline(t0.Add(timeout))
		for {
			m, err := c.Read(resp)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					lost++
				} else {
					errs++ // e.g. ECONNREFUSED from an ICMP error
				}
				break
			}
			if m >= 4 && binary.BigEndian.Uint32(resp) == uint32(i) {
				lat = append(lat, time.Since(t0))
				break
			}
		}
	}
	return summarize(sent, errs, lost, lat, time.Since(start)), nil
}

// giveUpAfter is how many unanswered UDP requests in a row, from the
// start, end a UDPRR run.
const giveUpAfter = 20

// ConnRate opens n short connections to addr, parallel at a time: each
// connects, sends 64 bytes, reads the 64-byte echo and closes. Failures
// are counted, not fatal: how many a path drops under load is part of
// what is measured.
func ConnRate(ctx context.Context, addr string, n, parallel int) Result {
	var (
		next   atomic.Int64
		errs   atomic.Int64
		mu     sync.Mutex
		lat    = make([]time.Duration, 0, n)
		wg     sync.WaitGroup
		dialer = net.Dialer{Timeout: 5 * time.Second}
	)
	start := time.Now()
	for range parallel {
		wg.Go(func() {
			buf := make([]byte, 64)
			for next.Add(1) <= int64(n) {
				t0 := time.Now()
				if err := oneConn(ctx, &dialer, addr, buf); err != nil {
					errs.Add(1)
					continue
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return summarize(n, int(errs.Load()), 0, lat, time.Since(start))
}

func oneConn(ctx context.Context, d *net.Dialer, addr string, buf []byte) error {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err = io.ReadFull(c, buf)
	return err
}

// WaitTCP dials addr until a connection succeeds or ctx ends; the harness
// uses it to know a server inside a namespace is up.
func WaitTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("probe: wait for %s: %w", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func summarize(n, errs, lost int, lat []time.Duration, elapsed time.Duration) Result {
	r := Result{N: n, Errors: errs, Lost: lost, Seconds: elapsed.Seconds()}
	if elapsed > 0 {
		r.PerSecond = float64(n) / elapsed.Seconds()
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		r.P50 = micros(Percentile(lat, 50))
		r.P99 = micros(Percentile(lat, 99))
	}
	return r
}

// Percentile returns the p-th percentile (nearest rank) of sorted, which
// must not be empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(p/100*float64(len(sorted))+0.5) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
