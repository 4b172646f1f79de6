package engine

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{"plain", "web", "web", false},
		{"docker slash form", "/web", "web", false},
		{"dots dashes underscores", "my_app-1.2", "my_app-1.2", false},
		{"single character", "a", "", true},
		{"leading dash", "-web", "", true},
		{"space", "my web", "", true},
		{"slash inside", "a/b", "", true},
		{"empty", "", "", true},
		{"looks like an ID", strings.Repeat("ab", 32), "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := checkName(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("checkName(%q) err = %v, wantErr %v", tc.in, err, tc.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "[a-zA-Z0-9_.-]") && !strings.Contains(err.Error(), "ID") {
					t.Errorf("checkName(%q) err = %q: want ErrInvalid naming the allowed characters", tc.in, err)
				}
				return
			}
			if got != tc.want {
				t.Errorf("checkName(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	idA := "abc123" + strings.Repeat("0", 58)
	idB := "abd456" + strings.Repeat("1", 58)
	idC := "fff000" + strings.Repeat("2", 58)
	ids := []string{idA, idB, idC}
	names := map[string]string{"web": idA, "db": idB, "fff": idB}
	tests := []struct {
		name    string
		key     string
		want    string
		wantErr error
		errText string
	}{
		{"full ID", idC, idC, nil, ""},
		{"name", "db", idB, nil, ""},
		{"name with slash", "/web", idA, nil, ""},
		{"unique prefix", "abc", idA, nil, ""},
		{"one character prefix", "f", idC, nil, ""},
		{"name wins over prefix", "fff", idB, nil, ""},
		{"ambiguous prefix", "ab", "", ErrConflict, "2 sandbox IDs start with \"ab\": give more digits or the name"},
		{"unknown", "nope", "", ErrNotFound, "no such sandbox: nope"},
		{"empty", "", "", ErrInvalid, "empty sandbox name or ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolve("sandbox", tc.key, ids, names)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("resolve(%q) err = %v, want %v containing %q", tc.key, err, tc.wantErr, tc.errText)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("resolve(%q) = %q, %v; want %q", tc.key, got, err, tc.want)
			}
		})
	}
}

func TestRandomName(t *testing.T) {
	pattern := regexp.MustCompile(`^[a-z]+_[a-z]+[0-9]*$`)
	taken := make(map[string]bool)
	for range 2000 {
		n := randomName(func(s string) bool { return taken[s] })
		if taken[n] {
			t.Fatalf("randomName returned %q, which is taken", n)
		}
		if !pattern.MatchString(n) {
			t.Fatalf("randomName = %q, want adjective_surname", n)
		}
		if _, err := checkName(n); err != nil {
			t.Fatalf("randomName = %q, not a valid name: %v", n, err)
		}
		taken[n] = true
	}
	// 2000 names from 1600 combinations: the digit suffix must have kicked in.
	if len(taken) != 2000 {
		t.Errorf("got %d distinct names, want 2000", len(taken))
	}
}

func TestNewID(t *testing.T) {
	a, b := newID(), newID()
	if !isHex64(a) || !isHex64(b) || a == b {
		t.Errorf("newID() = %q, %q: want two distinct 64-hex-digit IDs", a, b)
	}
	if shortID(a) != a[:12] {
		t.Errorf("shortID = %q, want %q", shortID(a), a[:12])
	}
}
