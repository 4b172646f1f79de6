package nat

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestInFlight(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.4")
	f := newInFlight(3, 2)
	steps := []struct {
		name    string
		acquire netip.Addr
		release netip.Addr
		want    bool
	}{
		{name: "a 1", acquire: a, want: true},
		{name: "a 2", acquire: a, want: true},
		{name: "a 3 over per-source", acquire: a, want: false},
		{name: "b 1", acquire: b, want: true},
		{name: "c 1 over total", acquire: c, want: false},
		{name: "a releases one", release: a},
		{name: "c 1 fits now", acquire: c, want: true},
		{name: "a still at 1, but total full", acquire: a, want: false},
	}
	for _, st := range steps {
		if st.release.IsValid() {
			f.release(st.release)
			continue
		}
		if got := f.acquire(st.acquire); got != st.want {
			t.Fatalf("%s: acquire = %v, want %v", st.name, got, st.want)
		}
	}
	f.release(a)
	f.release(b)
	f.release(c)
	if f.total != 0 || len(f.perSource) != 0 {
		t.Fatalf("after releasing everything: total %d, per source %v", f.total, f.perSource)
	}
}

// recordHandler keeps the records logged through it.
type recordHandler struct {
	mu      sync.Mutex
	records []map[string]any
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	m := map[string]any{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	h.mu.Lock()
	h.records = append(h.records, m)
	h.mu.Unlock()
	return nil
}

func TestLogLimiter(t *testing.T) {
	h := &recordHandler{}
	clk := newFakeClock()
	l := newLogLimiter(slog.New(h), clk.Now)
	for i := range 15 {
		l.warn("dial failed", "n", i)
	}
	clk.Advance(l.interval)
	l.warn("dial failed", "n", 15)
	var want []map[string]any
	for i := range l.burst {
		want = append(want, map[string]any{"msg": "dial failed", "n": int64(i)})
	}
	want = append(want, map[string]any{"msg": "dial failed", "n": int64(15), "suppressed": int64(5)})
	if diff := cmp.Diff(want, h.records); diff != "" {
		t.Fatalf("records (-want +got):\n%s", diff)
	}
}

// TestForwardsUDPExpiry: an idle published-UDP flow is closed on the
// injected clock, and the client's next datagram starts a fresh one.
func TestForwardsUDPExpiry(t *testing.T) {
	checkGoroutines(t)
	d := &loopDialer{udp: udpEchoServer(t)}
	f := NewForwards(d, gw, testLogger(t))
	defer f.Close()
	clk := newFakeClock()
	f.clock = clk.Now
	m, err := f.Add(Mapping{Proto: "udp", HostIP: lo, Target: netip.MustParseAddrPort("172.17.0.2:5353")})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	p := f.ports[keyOf(m)]
	f.mu.Unlock()
	c := dialUDP(t, netip.AddrPortFrom(lo, m.HostPort))
	steps := []struct {
		name      string
		advance   time.Duration
		wantDials int
	}{
		{"first datagram opens a flow", 0, 1},
		{"answered, kept at 29s; a conversation from now", udpUnrepliedTimeout - time.Second, 1},
		{"conversation kept at 179s idle", udpStreamTimeout - time.Second, 1},
		{"idle 180s: expired, new flow", udpStreamTimeout, 2},
	}
	for _, st := range steps {
		clk.Advance(st.advance)
		p.expire()
		if got := roundTrip(t, c, st.name); got != "echo "+st.name {
			t.Fatalf("%s: reply %q", st.name, got)
		}
		if got := len(d.sources()); got != st.wantDials {
			t.Fatalf("%s: %d dials, want %d", st.name, got, st.wantDials)
		}
	}
}
