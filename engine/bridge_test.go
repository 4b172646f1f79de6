package engine

import (
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/usernet/usernet/stack"
)

// TestNetBridgeInternal builds a real data path for an internal network:
// no NAT behind the gateway and no published ports, while an ordinary
// network publishes. (The e2e tests check the traffic itself.)
func TestNetBridgeInternal(t *testing.T) {
	tests := []struct {
		name        string
		internal    bool
		wantPublish bool
	}{
		{name: "ordinary", internal: false, wantPublish: true},
		{name: "internal", internal: true, wantPublish: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := newNetBridge(bridgeSpec{
				Name:       tc.name,
				Gateway:    netip.MustParsePrefix("10.77.0.1/24"),
				MAC:        macFor(netip.MustParseAddr("10.77.0.1")),
				MTU:        65520,
				Internal:   tc.internal,
				DisableICC: true,
				Logger:     slog.New(slog.DiscardHandler),
				Clock:      time.Now,
			})
			if err != nil {
				t.Fatalf("newNetBridge: %v", err)
			}
			defer b.Close()
			if mode := b.EchoMode(); (mode == "none") != tc.internal {
				t.Errorf("EchoMode = %q; internal %v", mode, tc.internal)
			}
			wantTCP := map[bool]string{true: "translated", false: "netstack"}[stack.TranslationSupported()]
			if tc.internal {
				wantTCP = "none"
			}
			if mode := b.TCPMode(); mode != wantTCP {
				t.Errorf("TCPMode = %q, want %q", mode, wantTCP)
			}
			m, err := b.Publish(PortMapping{ContainerPort: 80, Proto: "tcp", HostIP: netip.MustParseAddr("127.0.0.1")},
				netip.MustParseAddrPort("10.77.0.2:80"))
			if tc.wantPublish {
				if err != nil {
					t.Fatalf("Publish on an ordinary network: %v", err)
				}
				if err := b.Unpublish(m, netip.MustParseAddrPort("10.77.0.2:80")); err != nil {
					t.Errorf("Unpublish: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !errors.Is(err, errInternal) {
				t.Errorf("Publish on an internal network = %v, want errInternal (ErrInvalid)", err)
			}
		})
	}
}
