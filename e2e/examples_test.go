package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestExamples runs the scripts in examples/ as the unprivileged user, the
// way a reader would, so that CI keeps them working.
func TestExamples(t *testing.T) {
	h := env(t)

	t.Run("quickstart", func(t *testing.T) {
		h.fresh(t)
		src, err := os.ReadFile(filepath.Join("..", "examples", "quickstart.sh"))
		if err != nil {
			t.Fatal(err)
		}
		script := filepath.Join(h.root, "quickstart.sh")
		if err := os.WriteFile(script, src, 0o755); err != nil {
			t.Fatal(err)
		}
		webPort, hostPort := freePort(t), freePort(t)
		for hostPort == webPort {
			hostPort = freePort(t)
		}
		r := h.runAs(h.user, []string{"bash", script}, []string{
			"WEB_PORT=" + strconv.Itoa(webPort),
			"HOST_PORT=" + strconv.Itoa(hostPort),
		}, nil, 3*time.Minute)
		if r.err != nil || r.code != 0 {
			t.Fatalf("examples/quickstart.sh: %s", r)
		}
		for _, want := range []string{
			"80/tcp -> 0.0.0.0:" + strconv.Itoa(webPort),
			"hello from a usernet sandbox",
			"hello from the host",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("quickstart output lacks %q:\n%s", want, r.stdout)
			}
		}
		if ids := h.psAll(t); len(ids) != 0 {
			t.Errorf("quickstart left sandboxes %v", ids)
		}
		for _, p := range processesOf(h.user.uid) {
			if strings.Contains(strings.Join(p.cmdline, " "), "http.server") {
				t.Errorf("quickstart left a web server running: %v", p)
			}
		}
		for _, port := range []int{webPort, hostPort} {
			if err := portIsFree(port); err != nil {
				t.Errorf("port %d still in use after the quickstart: %v", port, err)
			}
		}
	})
}
