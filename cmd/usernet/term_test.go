package main

import (
	"os"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestMakeRaw(t *testing.T) {
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	defer ptm.Close()
	fd := int(ptm.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	mode := func() unix.Termios {
		t.Helper()
		tio, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		return *tio
	}
	cooked := mode()

	restore, err := makeRaw(pts)
	if err != nil {
		t.Fatalf("makeRaw: %v", err)
	}
	raw := mode()
	type flags struct{ Canonical, Echo, Signals, OutputProcessing, CRToNL bool }
	of := func(tio unix.Termios) flags {
		return flags{
			Canonical:        tio.Lflag&unix.ICANON != 0,
			Echo:             tio.Lflag&unix.ECHO != 0,
			Signals:          tio.Lflag&unix.ISIG != 0,
			OutputProcessing: tio.Oflag&unix.OPOST != 0,
			CRToNL:           tio.Iflag&unix.ICRNL != 0,
		}
	}
	if diff := cmp.Diff(flags{}, of(raw)); diff != "" {
		t.Errorf("raw mode (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(flags{true, true, true, true, true}, of(cooked)); diff != "" {
		t.Fatalf("a new pty is not in cooked mode (-want +got):\n%s", diff)
	}

	if err := restore(); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if diff := cmp.Diff(cooked, mode()); diff != "" {
		t.Errorf("mode after restore (-before +after):\n%s", diff)
	}
}

func TestMakeRawNotATerminal(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := makeRaw(f); err == nil {
		t.Error("makeRaw(/dev/null) succeeded, want an error")
	}
}
