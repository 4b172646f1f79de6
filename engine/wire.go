package engine

import (
	"context"
	"errors"
	"os"

	"github.com/usernet/usernet/sandbox"
	vswitch "github.com/usernet/usernet/switch"
)

// This file connects the engine's launcher (deps.go) to the sandbox
// package; bridge.go does the same for the data path.

func defaultDeps() deps {
	return deps{
		launcher:  sandboxLauncher{},
		newBridge: newNetBridge,
		readFile:  os.ReadFile,
		hostname:  os.Hostname,
	}
}

// sandboxLauncher starts sandboxes with sandbox.Start.
type sandboxLauncher struct{}

var sandboxModes = map[netMode]sandbox.NetMode{
	modeBridge: sandbox.NetBridge,
	modeHost:   sandbox.NetHost,
	modeNone:   sandbox.NetNone,
}

// Launch implements launcher.
func (sandboxLauncher) Launch(ctx context.Context, ls launchSpec) (sandboxProcess, error) {
	spec := sandbox.Spec{
		Args:       ls.Args,
		Env:        ls.Env,
		Hostname:   ls.Hostname,
		TTY:        ls.TTY,
		Stdin:      ls.Stdin,
		Stdout:     ls.Stdout,
		Stderr:     ls.Stderr,
		Net:        sandboxModes[ls.Mode],
		ResolvConf: ls.ResolvConf,
		Hosts:      ls.Hosts,
		Logger:     ls.Logger,
	}
	if ls.Bypass != nil {
		spec.Bypass = ls.Bypass
	}
	if i := ls.Iface; i != nil {
		spec.Iface = &sandbox.Iface{Name: i.Name, MAC: vswitch.MAC(i.MAC), Addr: i.Addr, Gateway: i.Gateway, MTU: i.MTU}
	}
	sb, err := sandbox.Start(ctx, spec)
	if err != nil {
		return nil, startError(err)
	}
	return sandboxHandle{sb}, nil
}

// sandboxHandle adapts *sandbox.Sandbox to sandboxProcess.
type sandboxHandle struct{ *sandbox.Sandbox }

// Exec implements sandboxProcess.
func (h sandboxHandle) Exec(cfg ExecConfig) (execProcess, error) {
	p, err := h.Sandbox.Exec(sandbox.ExecSpec{
		Args:   cfg.Args,
		Env:    cfg.Env,
		Dir:    cfg.WorkingDir,
		TTY:    cfg.TTY,
		Stdin:  cfg.Stdin,
		Stdout: cfg.Stdout,
		Stderr: cfg.Stderr,
	})
	if err != nil {
		return nil, startError(err)
	}
	return p, nil
}

// startError gives a *sandbox.StartError (the command itself could not
// start: not found, not executable) its engine kinds, so that callers need
// not know the sandbox package. Other errors are returned as they are.
func startError(err error) error {
	var se *sandbox.StartError
	if errors.As(err, &se) {
		return commandError(se.Code, err)
	}
	return err
}
