package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/usernet/usernet/engine"
)

// forwardedSignals are the signals a foreground run or exec passes on to
// its command instead of dying from them (docker's sig-proxy), so that
// usernet also lives to restore a terminal it put in raw mode. With -t, ^C
// typed on the terminal is no signal to usernet at all: raw mode passes it
// on as a byte to the command's pty in the sandbox, whose line discipline
// turns it into SIGINT for the command's foreground process group.
var forwardedSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
}

// forwarder catches forwardedSignals from the moment it is made and
// delivers them, in order, once start is called. Signals caught before
// start wait in the channel (a few suffice: nobody types ^C sixteen times
// while a sandbox starts).
type forwarder struct {
	errOut io.Writer // where delivery failures are reported
	ch     chan os.Signal
	done   chan struct{}
	wg     sync.WaitGroup
}

// catchSignals starts catching forwardedSignals, and SIGWINCH too with
// tty: the sandbox's agent reads the new size from the user's terminal
// (which it holds for relaying) when the command is sent SIGWINCH, copies
// it to the command's pty, and the kernel signals the pty's foreground
// process group.
func catchSignals(errOut io.Writer, tty bool) *forwarder {
	f := &forwarder{errOut: errOut, ch: make(chan os.Signal, 16), done: make(chan struct{})}
	signal.Notify(f.ch, forwardedSignals...)
	if tty {
		signal.Notify(f.ch, syscall.SIGWINCH)
	}
	return f
}

// start delivers caught signals with send on a goroutine of its own until
// stop. A command that already exited (ErrConflict) or was removed
// (ErrNotFound) needs no signal, so those errors are not worth a word.
func (f *forwarder) start(send func(os.Signal) error) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			select {
			case sig := <-f.ch:
				err := send(sig)
				if err != nil && !errors.Is(err, engine.ErrConflict) && !errors.Is(err, engine.ErrNotFound) {
					fmt.Fprintf(f.errOut, "usernet: forwarding %v: %s\n", sig, oneLine(err.Error()))
				}
			case <-f.done:
				return
			}
		}
	}()
}

// stop restores the signals' default handling and waits for the delivery
// goroutine to end. Signals caught but not yet delivered are dropped.
func (f *forwarder) stop() {
	signal.Stop(f.ch)
	close(f.done)
	f.wg.Wait()
}

// toSyscall converts a caught signal (always a syscall.Signal on Linux).
func toSyscall(sig os.Signal) syscall.Signal {
	if s, ok := sig.(syscall.Signal); ok {
		return s
	}
	return syscall.SIGTERM
}
