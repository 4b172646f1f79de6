package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
)

// pprofEnv names the variable that makes the daemon serve Go's profiler
// (bench's PROFILE=1 sets it). It is an environment variable, not a flag,
// because the daemon is usually started on demand by another command,
// which passes its environment on.
const pprofEnv = "USERNET_PPROF"

// servePprof serves net/http/pprof on the loopback address in $USERNET_PPROF
// until ctx ends. The profiler exposes the daemon's memory, so anything but
// a loopback address is refused.
func servePprof(ctx context.Context, logger *slog.Logger) error {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("invalid %s=%q: want a loopback address and port such as 127.0.0.1:6060", pprofEnv, addr)
	}
	l, err := net.Listen("tcp", ap.String())
	if err != nil {
		return fmt.Errorf("%s: %w", pprofEnv, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("pprof server stopped", "err", err)
		}
	}()
	logger.Info("serving pprof", "addr", ap.String())
	return nil
}
