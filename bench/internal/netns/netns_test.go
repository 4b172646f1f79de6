package netns

import (
	"context"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestNamespaceAndTAP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	ctx := context.Background()
	ns, err := Add(ctx, "unbench-test")
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	defer func() {
		if err := ns.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if _, err := os.Stat(ns.Path()); !os.IsNotExist(err) {
			t.Errorf("after Close, %s: %v; want it gone", ns.Path(), err)
		}
	}()
	hostNS, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inside string
	fd := -1
	if err := ns.Do(func() error {
		inside, _ = os.Readlink("/proc/thread-self/ns/net")
		var err error
		fd, err = OpenPlainTAP("tap9")
		return err
	}); err != nil {
		t.Fatalf("Do: %v", err)
	}
	defer unix.Close(fd)
	if inside == hostNS {
		t.Errorf("Do ran in the host namespace %s", hostNS)
	}
	out, err := ns.Output(ctx, "ip", "-o", "link", "show", "tap9")
	if err != nil {
		t.Fatalf("tap9 not in the namespace: %v", err)
	}
	if !strings.Contains(string(out), "tap9") {
		t.Errorf("ip link show tap9 = %q", out)
	}
	if err := Run(ctx, "ip", "link", "show", "tap9"); err == nil {
		t.Error("tap9 also exists in the host namespace")
	}
	if err := ns.Run(ctx, "false"); err == nil {
		t.Error(`Run("false") succeeded, want an error`)
	}
}
