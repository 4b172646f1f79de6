package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/usernet/usernet/engine"
)

// Engine is what the server needs of the control plane. *engine.Engine
// provides it through FromEngine; tests substitute a fake.
type Engine interface {
	Run(ctx context.Context, cfg engine.RunConfig) (id string, warnings []string, err error)
	Wait(ctx context.Context, nameOrID string) (int, error)
	Stop(ctx context.Context, nameOrID string, opts engine.StopOptions) error
	Kill(nameOrID string, sig syscall.Signal) error
	Remove(ctx context.Context, nameOrID string, force bool) error
	Exec(ctx context.Context, nameOrID string, cfg engine.ExecConfig) (Process, error)
	List(all bool) []engine.ContainerSummary
	Inspect(nameOrID string) (engine.ContainerJSON, error)
	Logs(nameOrID string, stream engine.LogStream, follow bool) (io.ReadCloser, error)
	Port(nameOrID string) ([]engine.PortMapping, error)
	Networks() []engine.NetworkResource
	NetworkInspect(nameOrID string) (engine.NetworkResource, error)
	NetworkCreate(ctx context.Context, cfg engine.NetworkCreateConfig) (id string, err error)
	NetworkRemove(nameOrID string) error
	NetworkPrune() ([]string, error)
}

// Process is a command started by Engine.Exec (*engine.Process).
type Process interface {
	Wait() (int, error)
	Signal(sig syscall.Signal) error
}

// FromEngine adapts *engine.Engine to Engine; the only difference is that
// Exec returns the Process interface.
func FromEngine(e *engine.Engine) Engine { return engineAdapter{e} }

type engineAdapter struct{ *engine.Engine }

func (a engineAdapter) Exec(ctx context.Context, nameOrID string, cfg engine.ExecConfig) (Process, error) {
	p, err := a.Engine.Exec(ctx, nameOrID, cfg)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Server serves the API for one engine. Create it with NewServer, run it
// with Serve and end it with Shutdown. Its methods are safe for concurrent
// use.
type Server struct {
	eng  Engine
	log  *slog.Logger
	http *http.Server

	// base is the parent of every request's context; cancelling it at
	// Shutdown ends waits and log follows that would otherwise hold the
	// daemon up forever.
	base   context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	execs map[string]Process // running exec'd commands by exec ID
}

// NewServer returns a server for eng that logs to logger (nil discards).
func NewServer(eng Engine, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base, cancel := context.WithCancel(context.Background())
	s := &Server{eng: eng, log: logger, base: base, cancel: cancel, execs: make(map[string]Process)}
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
		ConnContext:       withConn,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	return s
}

// Serve accepts connections on l until Shutdown; it returns nil after a
// Shutdown. Use a listener from Listen or WrapListener so that clients
// can pass descriptors.
func (s *Server) Serve(l net.Listener) error {
	if err := s.http.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting connections, ends long-running requests (waits,
// log follows: their clients see the stream end) and waits for handlers to
// return until ctx ends, then closes the remaining connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.cancel()
	err := s.http.Shutdown(ctx)
	if err != nil {
		s.http.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// Handler returns the API's HTTP handler (without descriptor passing,
// which needs the connection; Serve has it).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "OK") })
	mux.HandleFunc("POST /v1/sandboxes", s.run)
	mux.HandleFunc("GET /v1/sandboxes", s.list)
	mux.HandleFunc("GET /v1/sandboxes/{name}", s.inspect)
	mux.HandleFunc("DELETE /v1/sandboxes/{name}", s.remove)
	mux.HandleFunc("POST /v1/sandboxes/{name}/wait", s.wait)
	mux.HandleFunc("POST /v1/sandboxes/{name}/stop", s.stop)
	mux.HandleFunc("POST /v1/sandboxes/{name}/kill", s.kill)
	mux.HandleFunc("GET /v1/sandboxes/{name}/logs", s.logs)
	mux.HandleFunc("GET /v1/sandboxes/{name}/ports", s.ports)
	mux.HandleFunc("POST /v1/sandboxes/{name}/exec", s.exec)
	mux.HandleFunc("POST /v1/execs/{id}/kill", s.execKill)
	mux.HandleFunc("GET /v1/networks", s.networks)
	mux.HandleFunc("GET /v1/networks/{name}", s.networkInspect)
	mux.HandleFunc("POST /v1/networks", s.networkCreate)
	mux.HandleFunc("DELETE /v1/networks/{name}", s.networkRemove)
	mux.HandleFunc("POST /v1/networks/prune", s.networkPrune)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r)
		// Descriptors passed with a request that did not use them (the
		// wrong endpoint, an early error) do not outlive it.
		closeFiles(passedFiles(r.Context()))
	})
}

// maxBody bounds request bodies; a run request is a few KiB.
const maxBody = 1 << 20

// stdio returns the three descriptors passed with the request (or none),
// which the caller must close.
func stdio(r *http.Request) ([]*os.File, error) {
	files := passedFiles(r.Context())
	if len(files) != 0 && len(files) != 3 {
		closeFiles(files)
		return nil, fmt.Errorf("%w: expected 0 or 3 file descriptors (stdin, stdout, stderr), got %d", engine.ErrInvalid, len(files))
	}
	return files, nil
}

func (s *Server) run(w http.ResponseWriter, r *http.Request) {
	files, err := stdio(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	// The sandbox holds its own copies once Run returns, so ours are closed
	// right after it (a pipe's reader must not wait for the daemon's copy).
	defer func() { closeFiles(files) }()
	var req RunRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, err)
		return
	}
	cfg := req.config()
	if len(files) == 3 {
		cfg.Stdin, cfg.Stdout, cfg.Stderr = files[0], files[1], files[2]
	}
	id, warnings, err := s.eng.Run(r.Context(), cfg)
	closeFiles(files)
	files = nil
	if err != nil {
		s.failCommand(w, err)
		return
	}
	s.log.Debug("run request served", "id", id, "name", req.Name)
	stream := newStream(w)
	stream.send(RunResponse{ID: id, Warnings: warnings})
	if !req.Wait {
		return
	}
	stream.send(s.waitResponse(r.Context(), id).WaitResponse)
}

// waitResult is a WaitResponse and the error behind its Error field.
type waitResult struct {
	WaitResponse
	err error
}

// waitResponse waits for the sandbox's command and reports its status.
func (s *Server) waitResponse(ctx context.Context, nameOrID string) waitResult {
	code, err := s.eng.Wait(ctx, nameOrID)
	switch {
	case err == nil:
		return waitResult{WaitResponse: WaitResponse{StatusCode: code}}
	case s.base.Err() != nil:
		return waitResult{WaitResponse{Error: errShutdown.Error()}, errShutdown}
	}
	return waitResult{WaitResponse{Error: err.Error()}, err}
}

func (s *Server) wait(w http.ResponseWriter, r *http.Request) {
	// No early headers here: a bad name must still become a 404, and the
	// engine answers that at once while a good one blocks.
	resp := s.waitResponse(r.Context(), r.PathValue("name"))
	if resp.err != nil && errors.Is(resp.err, engine.ErrNotFound) {
		s.fail(w, resp.err)
		return
	}
	writeJSON(w, resp.WaitResponse)
}

// stop is POST /sandboxes/{name}/stop?t=S with docker's meaning of t:
// absent, the engine's default grace period; 0, kill at once; negative,
// wait as long as the command takes.
func (s *Server) stop(w http.ResponseWriter, r *http.Request) {
	var opts engine.StopOptions
	if t := r.URL.Query().Get("t"); t != "" {
		secs, err := strconv.ParseInt(t, 10, 64)
		if err != nil || secs > math.MaxInt64/int64(time.Second) {
			s.fail(w, fmt.Errorf("%w: stop timeout %q is not a whole number of seconds", engine.ErrInvalid, t))
			return
		}
		timeout := time.Duration(secs) * time.Second
		opts.Timeout = &timeout
	}
	if err := s.eng.Stop(r.Context(), r.PathValue("name"), opts); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// signalParam reads the signal query parameter (a number).
func signalParam(r *http.Request) (syscall.Signal, error) {
	v := r.URL.Query().Get("signal")
	if v == "" {
		return syscall.SIGKILL, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n >= 65 {
		return 0, fmt.Errorf("%w: signal %q is not a signal number (1-64)", engine.ErrInvalid, v)
	}
	return syscall.Signal(n), nil
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	sig, err := signalParam(r)
	if err == nil {
		err = s.eng.Kill(r.PathValue("name"), sig)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request) {
	force := boolParam(r, "force")
	if err := s.eng.Remove(r.Context(), r.PathValue("name"), force); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.eng.List(boolParam(r, "all")))
}

func (s *Server) inspect(w http.ResponseWriter, r *http.Request) {
	c, err := s.eng.Inspect(r.PathValue("name"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, c)
}

func (s *Server) ports(w http.ResponseWriter, r *http.Request) {
	p, err := s.eng.Port(r.PathValue("name"))
	if err != nil {
		s.fail(w, err)
		return
	}
	if p == nil {
		p = []engine.PortMapping{}
	}
	writeJSON(w, p)
}

func (s *Server) networks(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.eng.Networks())
}

func (s *Server) networkInspect(w http.ResponseWriter, r *http.Request) {
	n, err := s.eng.NetworkInspect(r.PathValue("name"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, n)
}

func (s *Server) networkCreate(w http.ResponseWriter, r *http.Request) {
	var req NetworkCreateRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, err)
		return
	}
	id, err := s.eng.NetworkCreate(r.Context(), req.config())
	if err != nil {
		s.fail(w, err)
		return
	}
	s.log.Debug("network created", "name", req.Name, "id", id)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(NetworkCreateResponse{ID: id})
}

func (s *Server) networkRemove(w http.ResponseWriter, r *http.Request) {
	if err := s.eng.NetworkRemove(r.PathValue("name")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) networkPrune(w http.ResponseWriter, r *http.Request) {
	names, err := s.eng.NetworkPrune()
	if err != nil {
		s.fail(w, err)
		return
	}
	if names == nil {
		names = []string{}
	}
	writeJSON(w, NetworkPruneResponse{NetworksDeleted: names})
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	stream := engine.LogStream(r.URL.Query().Get("stream"))
	if stream == "" {
		stream = engine.Stdout
	}
	rc, err := s.eng.Logs(r.PathValue("name"), stream, boolParam(r, "follow"))
	if err != nil {
		s.fail(w, err)
		return
	}
	// Closing the reader is how a follow ends early: when the client goes
	// away or the daemon shuts down.
	stop := context.AfterFunc(r.Context(), func() { rc.Close() })
	defer func() {
		if stop() {
			rc.Close()
		}
	}()
	w.Header().Set("Content-Type", "application/octet-stream")
	// Send the headers now: a quiet sandbox must not keep the client
	// waiting to learn that the request was accepted.
	rw := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	rw.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if ferr := rw.Flush(); ferr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && r.Context().Err() == nil {
				s.log.Warn("reading logs", "sandbox", r.PathValue("name"), "err", err)
			}
			return
		}
	}
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	files, err := stdio(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	defer func() { closeFiles(files) }()
	var req ExecRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, err)
		return
	}
	cfg := engine.ExecConfig{Args: req.Args, Env: req.Env, WorkingDir: req.WorkingDir, TTY: req.TTY}
	if len(files) == 3 {
		cfg.Stdout, cfg.Stderr = files[1], files[2]
		if req.Interactive || req.TTY {
			cfg.Stdin = files[0]
		}
	}
	if len(cfg.Args) == 0 {
		s.fail(w, fmt.Errorf("%w: exec needs a command", engine.ErrInvalid))
		return
	}
	proc, err := s.eng.Exec(r.Context(), r.PathValue("name"), cfg)
	closeFiles(files)
	files = nil
	if err != nil {
		s.failCommand(w, err)
		return
	}
	id := newExecID()
	s.mu.Lock()
	s.execs[id] = proc
	s.mu.Unlock()
	done := make(chan WaitResponse, 1)
	go func() {
		code, err := proc.Wait()
		s.mu.Lock()
		delete(s.execs, id)
		s.mu.Unlock()
		if err != nil {
			done <- WaitResponse{Error: err.Error()}
			return
		}
		done <- WaitResponse{StatusCode: code}
	}()
	stream := newStream(w)
	stream.send(ExecResponse{ExecID: id})
	// The command keeps running if the client goes away, as with docker
	// exec; only this response ends.
	select {
	case resp := <-done:
		stream.send(resp)
	case <-r.Context().Done():
		if s.base.Err() != nil {
			stream.send(WaitResponse{Error: errShutdown.Error()})
		}
	}
}

func (s *Server) execKill(w http.ResponseWriter, r *http.Request) {
	sig, err := signalParam(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	id := r.PathValue("id")
	s.mu.Lock()
	proc, ok := s.execs[id]
	s.mu.Unlock()
	if !ok {
		s.fail(w, fmt.Errorf("%w: no running exec %s", engine.ErrNotFound, id))
		return
	}
	if err := proc.Signal(sig); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// newExecID returns a random 32-hex-digit exec ID.
func newExecID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// stream writes newline-delimited JSON objects, each flushed at once so
// the client sees it while the response goes on.
type stream struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	e  *json.Encoder
}

func newStream(w http.ResponseWriter) *stream {
	w.Header().Set("Content-Type", "application/x-ndjson")
	st := &stream{w: w, rc: http.NewResponseController(w), e: json.NewEncoder(w)}
	w.WriteHeader(http.StatusOK)
	st.rc.Flush()
	return st
}

// send writes v; a client that went away is noticed by the caller's
// context, so write errors need no handling here.
func (st *stream) send(v any) {
	if st.e.Encode(v) == nil {
		st.rc.Flush()
	}
}

// decode reads a JSON request body into v, refusing unknown fields so that
// a client built against a newer API fails loudly instead of silently
// losing an option.
func decode(r *http.Request, v any) error {
	d := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", engine.ErrInvalid, err)
	}
	return nil
}

func boolParam(r *http.Request, name string) bool {
	b, _ := strconv.ParseBool(r.URL.Query().Get(name))
	return b
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// fail answers with err's message and the status its kind calls for.
func (s *Server) fail(w http.ResponseWriter, err error) {
	status := statusOf(err)
	if status == http.StatusInternalServerError {
		s.log.Error("request failed", "err", err)
	}
	writeError(w, status, "", err.Error())
}

// failCommand is fail for run and exec, whose errors may say that the
// command itself cannot be started; the kind lets the CLI exit 127 or 126
// as docker does.
func (s *Server) failCommand(w http.ResponseWriter, err error) {
	if kind := commandKind(err); kind != "" {
		writeError(w, http.StatusBadRequest, kind, err.Error())
		return
	}
	s.fail(w, err)
}

func writeError(w http.ResponseWriter, status int, kind, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(ErrorResponse{Message: msg, Kind: kind})
}

// statusOf maps an engine error to an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, engine.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, engine.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, engine.ErrInvalid):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// commandKind reports whether err says the command could not be started:
// the engine marks such errors ErrCommandNotFound (a shell's 127) or
// ErrCommandNotExecutable (126).
func commandKind(err error) string {
	switch {
	case errors.Is(err, engine.ErrCommandNotFound):
		return KindCommandNotFound
	case errors.Is(err, engine.ErrCommandNotExecutable):
		return KindCommandNotExecutable
	}
	return ""
}
