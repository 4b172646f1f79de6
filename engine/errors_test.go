package engine

import (
	"errors"
	"fmt"
	"os/exec"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/usernet/usernet/sandbox"
)

func TestStartErrorKinds(t *testing.T) {
	notFound := &sandbox.StartError{Code: 127, Err: &exec.Error{Name: "nosuch", Err: exec.ErrNotFound}}
	tests := []struct {
		name string
		err  error
		want map[string]bool
	}{
		{"not found", notFound,
			map[string]bool{"notFound": true, "notExecutable": false, "invalid": true, "exec.ErrNotFound": true}},
		{"not executable", &sandbox.StartError{Code: 126, Err: errors.New("permission denied")},
			map[string]bool{"notFound": false, "notExecutable": true, "invalid": true, "exec.ErrNotFound": false}},
		{"wrapped by the sandbox", fmt.Errorf("sandbox exec: %w", notFound),
			map[string]bool{"notFound": true, "notExecutable": false, "invalid": true, "exec.ErrNotFound": true}},
		{"sandbox setup failure", errors.New("sandbox: mount /proc: permission denied"),
			map[string]bool{"notFound": false, "notExecutable": false, "invalid": false, "exec.ErrNotFound": false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fmt.Errorf("start sandbox web: %w", startError(tt.err))
			got := map[string]bool{
				"notFound":         errors.Is(err, ErrCommandNotFound),
				"notExecutable":    errors.Is(err, ErrCommandNotExecutable),
				"invalid":          errors.Is(err, ErrInvalid),
				"exec.ErrNotFound": errors.Is(err, exec.ErrNotFound),
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors.Is(%q, ...) (-want +got):\n%s", err, diff)
			}
			if want := "start sandbox web: " + tt.err.Error(); err.Error() != want {
				t.Errorf("message %q, want %q (the kinds add no text)", err, want)
			}
		})
	}
}
