package engine

import (
	"errors"
	"fmt"
	"slices"
)

// kindError is an error whose message names the problem and the fix and
// which also matches one or more of the sentinel errors (ErrNotFound,
// ErrConflict, ErrInvalid, ErrCommandNotFound, ...) with errors.Is, without
// the sentinels' text cluttering the message.
type kindError struct {
	kinds   []error
	msg     string
	wrapped []error
}

func (e *kindError) Error() string { return e.msg }

// Is reports whether target is one of the error's kinds.
func (e *kindError) Is(target error) bool { return slices.Contains(e.kinds, target) }

// Unwrap returns the errors wrapped with %w in the message, if any.
func (e *kindError) Unwrap() []error { return e.wrapped }

// errorf formats an error of the given kind; %w verbs wrap as in fmt.Errorf.
func errorf(kind error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	ke := &kindError{kinds: []error{kind}, msg: err.Error()}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		ke.wrapped = []error{u.Unwrap()}
	case interface{ Unwrap() []error }:
		ke.wrapped = u.Unwrap()
	}
	return ke
}

// withKind marks err as being of kind, keeping its message.
func withKind(kind, err error) error {
	if err == nil || errors.Is(err, kind) {
		return err
	}
	return &kindError{kinds: []error{kind}, msg: err.Error(), wrapped: []error{err}}
}

// commandError marks err, a failure to start the command itself, as
// ErrCommandNotFound (code 127) or ErrCommandNotExecutable (any other
// code), and as ErrInvalid: the user's input is at fault.
func commandError(code int, err error) error {
	kind := ErrCommandNotExecutable
	if code == 127 {
		kind = ErrCommandNotFound
	}
	return &kindError{kinds: []error{kind, ErrInvalid}, msg: err.Error(), wrapped: []error{err}}
}
