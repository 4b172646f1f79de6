package engine

import (
	"errors"
	"fmt"
)

// kindError is an error whose message names the problem and the fix and
// which also matches one of ErrNotFound, ErrConflict or ErrInvalid with
// errors.Is, without the sentinel's text cluttering the message.
type kindError struct {
	kind    error
	msg     string
	wrapped []error
}

func (e *kindError) Error() string { return e.msg }

// Is reports whether target is the error's kind.
func (e *kindError) Is(target error) bool { return target == e.kind }

// Unwrap returns the errors wrapped with %w in the message, if any.
func (e *kindError) Unwrap() []error { return e.wrapped }

// errorf formats an error of the given kind; %w verbs wrap as in fmt.Errorf.
func errorf(kind error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	ke := &kindError{kind: kind, msg: err.Error()}
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
	return &kindError{kind: kind, msg: err.Error(), wrapped: []error{err}}
}
