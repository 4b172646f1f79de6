package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// makeRaw puts the terminal f in raw mode for run -t and exec -t and
// returns a function that restores the mode it had. In raw mode every key,
// ^C and ^Z included, reaches the command's pseudo-terminal in the sandbox
// unprocessed, and that pty does the echo, line editing and signals; the
// output arrives already translated (NL to CR NL) by it. The caller must
// call restore on every way out, errors and forwarded signals included: a
// terminal left raw is unusable for the user's shell.
func makeRaw(f *os.File) (restore func() error, err error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("read terminal mode: %w", err)
	}
	raw := rawMode(*old)
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("set terminal to raw mode: %w", err)
	}
	return func() error {
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, old); err != nil {
			return fmt.Errorf("restore terminal mode: %w", err)
		}
		return nil
	}, nil
}

// rawMode returns t changed as cfmakeraw(3) does: no input or output
// processing, no echo, no signals from keys, 8-bit characters, reads that
// return as soon as a byte is there.
func rawMode(t unix.Termios) unix.Termios {
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return t
}

// rawTerminal puts e's stdin, the user's terminal, in raw mode for run -t
// or exec -t once the command has started, and returns the function that
// restores it (a failure to restore is reported on e's stderr, as there is
// nothing else left to do).
func rawTerminal(e *env) (restore func(), err error) {
	r, err := makeRaw(e.in)
	if err != nil {
		return nil, err
	}
	return func() {
		if err := r(); err != nil {
			fmt.Fprintln(e.err, "usernet: "+err.Error())
		}
	}, nil
}
