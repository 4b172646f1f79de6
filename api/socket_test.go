package api

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestListen(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string) // makes the situation Listen meets
		wantErr string                          // "" means Listen succeeds
	}{
		{name: "fresh", prepare: func(*testing.T, string) {}},
		{name: "stale socket replaced", prepare: func(t *testing.T, path string) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close() // the file stays, nobody answers
		}},
		{name: "second daemon", prepare: func(t *testing.T, path string) {
			l, err := Listen(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, wantErr: "a usernet daemon is already running on "},
		{name: "live socket without our lock", prepare: func(t *testing.T, path string) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, wantErr: "a usernet daemon is already running on "},
		{name: "not a socket", prepare: func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "exists and is not a socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "usernet")
			if err := os.Mkdir(dir, 0o755); err != nil { // too open: Listen tightens it
				t.Fatal(err)
			}
			path := filepath.Join(dir, "usernet.sock")
			tc.prepare(t, path)
			l, err := Listen(path, nil)
			if tc.wantErr != "" {
				if err == nil {
					l.Close()
					t.Fatalf("Listen succeeded, want error containing %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Listen: %v, want error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen: %v", err)
			}
			for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != want {
					t.Errorf("mode of %s = %v, want %v", p, got, want)
				}
			}
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial the new socket: %v", err)
			}
			c.Close()
			if err := l.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket after Close: %v, want it removed", err)
			}
		})
	}
}

func TestListenRefusesForeignDirectory(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to create a directory owned by someone else")
	}
	dir := filepath.Join(t.TempDir(), "usernet")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(filepath.Join(dir, "usernet.sock"), nil)
	if err == nil || !strings.Contains(err.Error(), "is not a directory owned by uid") {
		t.Errorf("Listen in a foreign directory = %v, want an ownership error", err)
	}
}

func TestDefaultPaths(t *testing.T) {
	tests := []struct {
		name       string
		env        map[string]string
		wantSocket string
		wantState  string
	}{
		{name: "override", env: map[string]string{SocketEnv: "/x/s.sock", "XDG_RUNTIME_DIR": "/run/user/7", "XDG_DATA_HOME": "/d", "HOME": "/h"},
			wantSocket: "/x/s.sock", wantState: "/d/usernet"},
		{name: "xdg", env: map[string]string{SocketEnv: "", "XDG_RUNTIME_DIR": "/run/user/7", "XDG_DATA_HOME": "", "HOME": "/h"},
			wantSocket: "/run/user/7/usernet/usernet.sock", wantState: "/h/.local/share/usernet"},
		{name: "no runtime dir", env: map[string]string{SocketEnv: "", "XDG_RUNTIME_DIR": "", "XDG_DATA_HOME": "", "HOME": "/h", "TMPDIR": ""},
			wantSocket: filepath.Join("/tmp", "usernet-"+strconv.Itoa(os.Getuid()), "usernet.sock"), wantState: "/h/.local/share/usernet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if got := DefaultSocketPath(); got != tc.wantSocket {
				t.Errorf("DefaultSocketPath() = %q, want %q", got, tc.wantSocket)
			}
			got, err := DefaultStateDir()
			if err != nil || got != tc.wantState {
				t.Errorf("DefaultStateDir() = %q, %v; want %q", got, err, tc.wantState)
			}
		})
	}
}
