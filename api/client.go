package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/usernet/usernet/engine"
)

// Client talks to a daemon's socket. Its methods are safe for concurrent
// use; each call that passes descriptors uses a connection of its own.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the daemon at socket. It does not
// connect; see Connect for a client that makes sure a daemon answers.
func NewClient(socket string) *Client {
	c := &Client{socket: socket}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return c.dial(ctx)
		},
		DisableCompression: true,
	}}
	return c
}

// Socket returns the socket path the client talks to.
func (c *Client) Socket() string { return c.socket }

func (c *Client) dial(ctx context.Context) (*net.UnixConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, err
	}
	return conn.(*net.UnixConn), nil
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Ping checks that the daemon answers.
func (c *Client) Ping(ctx context.Context) error {
	resp, err := c.do(ctx, c.http, http.MethodGet, "/v1/ping", nil, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Stream is a response that goes on while a command runs: the exit status
// of a waited-for run or exec. Close it when done.
type Stream struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// Wait blocks until the command exits and returns its exit status. An
// error means the status is unknown (the daemon went away or could not
// wait).
func (s *Stream) Wait() (int, error) {
	var w WaitResponse
	if err := s.dec.Decode(&w); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, errors.New("the daemon closed the connection before the command exited")
		}
		return 0, fmt.Errorf("read exit status: %w", err)
	}
	if w.Error != "" {
		return 0, errors.New(w.Error)
	}
	return w.StatusCode, nil
}

// Close ends the response; the command goes on running.
func (s *Stream) Close() error { return s.body.Close() }

// Run starts a sandbox. stdio is nil or the three files that become the
// command's stdin, stdout and stderr; they are passed to the daemon as
// descriptors and stay the caller's. With req.Wait the returned Stream
// reports the exit status; otherwise it is nil.
func (c *Client) Run(ctx context.Context, req RunRequest, stdio []*os.File) (RunResponse, *Stream, error) {
	var started RunResponse
	st, err := c.startStream(ctx, "/v1/sandboxes", req, stdio, &started)
	if err != nil {
		return RunResponse{}, nil, err
	}
	if !req.Wait {
		st.Close()
		return started, nil, nil
	}
	return started, st, nil
}

// Exec starts a command in a running sandbox and returns its exec ID and a
// Stream that reports its exit status. stdio is as for Run.
func (c *Client) Exec(ctx context.Context, nameOrID string, req ExecRequest, stdio []*os.File) (string, *Stream, error) {
	var started ExecResponse
	st, err := c.startStream(ctx, "/v1/sandboxes/"+url.PathEscape(nameOrID)+"/exec", req, stdio, &started)
	if err != nil {
		return "", nil, err
	}
	return started.ExecID, st, nil
}

// startStream posts body (passing stdio as descriptors on a fresh
// connection when given) and decodes the response's first object into
// first.
func (c *Client) startStream(ctx context.Context, path string, body any, stdio []*os.File, first any) (*Stream, error) {
	hc := c.http
	if stdio != nil {
		conn, err := c.dial(ctx)
		if err != nil {
			return nil, err
		}
		if err := sendPreamble(conn, stdio); err != nil {
			conn.Close()
			return nil, err
		}
		hc = oneShotClient(conn)
	}
	resp, err := c.do(ctx, hc, http.MethodPost, path, nil, body)
	if err != nil {
		return nil, err
	}
	st := &Stream{body: resp.Body, dec: json.NewDecoder(resp.Body)}
	if err := st.dec.Decode(first); err != nil {
		st.Close()
		return nil, fmt.Errorf("read response: %w", err)
	}
	return st, nil
}

// oneShotClient returns an HTTP client whose only connection is conn: the
// descriptors in its preamble belong to exactly one request.
func oneShotClient(conn net.Conn) *http.Client {
	var used atomic.Bool
	return &http.Client{Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("descriptor-passing connection already used")
			}
			return conn, nil
		},
		DisableKeepAlives:  true,
		DisableCompression: true,
		MaxConnsPerHost:    1,
	}}
}

// Wait blocks until the sandbox's command exits and returns its status.
func (c *Client) Wait(ctx context.Context, nameOrID string) (int, error) {
	resp, err := c.do(ctx, c.http, http.MethodPost, sandboxPath(nameOrID, "wait"), nil, nil)
	if err != nil {
		return 0, err
	}
	st := &Stream{body: resp.Body, dec: json.NewDecoder(resp.Body)}
	defer st.Close()
	return st.Wait()
}

// Stop stops a sandbox: SIGTERM, then SIGKILL after timeoutSeconds (nil:
// the daemon's default of 10 s; 0: SIGKILL at once; negative: never), as
// docker stop -t.
func (c *Client) Stop(ctx context.Context, nameOrID string, timeoutSeconds *int) error {
	q := url.Values{}
	if timeoutSeconds != nil {
		q.Set("t", strconv.Itoa(*timeoutSeconds))
	}
	return c.doNoContent(ctx, http.MethodPost, sandboxPath(nameOrID, "stop"), q)
}

// Kill sends sig to a sandbox's command.
func (c *Client) Kill(ctx context.Context, nameOrID string, sig syscall.Signal) error {
	q := url.Values{"signal": {strconv.Itoa(int(sig))}}
	return c.doNoContent(ctx, http.MethodPost, sandboxPath(nameOrID, "kill"), q)
}

// ExecKill sends sig to a command started by Exec.
func (c *Client) ExecKill(ctx context.Context, execID string, sig syscall.Signal) error {
	q := url.Values{"signal": {strconv.Itoa(int(sig))}}
	return c.doNoContent(ctx, http.MethodPost, "/v1/execs/"+url.PathEscape(execID)+"/kill", q)
}

// Remove removes a sandbox; force kills a running one first.
func (c *Client) Remove(ctx context.Context, nameOrID string, force bool) error {
	q := url.Values{}
	if force {
		q.Set("force", "1")
	}
	return c.doNoContent(ctx, http.MethodDelete, sandboxPath(nameOrID, ""), q)
}

// List returns the running sandboxes, or all with all set, newest first.
func (c *Client) List(ctx context.Context, all bool) ([]engine.ContainerSummary, error) {
	q := url.Values{}
	if all {
		q.Set("all", "1")
	}
	var out []engine.ContainerSummary
	return out, c.getJSON(ctx, "/v1/sandboxes", q, &out)
}

// Inspect returns the `docker inspect` view of a sandbox.
func (c *Client) Inspect(ctx context.Context, nameOrID string) (engine.ContainerJSON, error) {
	var out engine.ContainerJSON
	return out, c.getJSON(ctx, sandboxPath(nameOrID, ""), nil, &out)
}

// Port returns a sandbox's published ports.
func (c *Client) Port(ctx context.Context, nameOrID string) ([]engine.PortMapping, error) {
	var out []engine.PortMapping
	return out, c.getJSON(ctx, sandboxPath(nameOrID, "ports"), nil, &out)
}

// Networks returns every network.
func (c *Client) Networks(ctx context.Context) ([]engine.NetworkResource, error) {
	var out []engine.NetworkResource
	return out, c.getJSON(ctx, "/v1/networks", nil, &out)
}

// NetworkInspect returns the `docker network inspect` view of a network.
func (c *Client) NetworkInspect(ctx context.Context, nameOrID string) (engine.NetworkResource, error) {
	var out engine.NetworkResource
	return out, c.getJSON(ctx, "/v1/networks/"+url.PathEscape(nameOrID), nil, &out)
}

// NetworkCreate creates a user-defined network and returns its ID.
func (c *Client) NetworkCreate(ctx context.Context, req NetworkCreateRequest) (string, error) {
	resp, err := c.do(ctx, c.http, http.MethodPost, "/v1/networks", nil, req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out NetworkCreateResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("read response of network create: %w", err)
	}
	return out.ID, nil
}

// NetworkRemove removes a user-defined network by name, ID or ID prefix.
func (c *Client) NetworkRemove(ctx context.Context, nameOrID string) error {
	return c.doNoContent(ctx, http.MethodDelete, "/v1/networks/"+url.PathEscape(nameOrID), nil)
}

// NetworkPrune removes every user-defined network no sandbox uses and
// returns their names.
func (c *Client) NetworkPrune(ctx context.Context) ([]string, error) {
	resp, err := c.do(ctx, c.http, http.MethodPost, "/v1/networks/prune", nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out NetworkPruneResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("read response of network prune: %w", err)
	}
	return out.NetworksDeleted, nil
}

// Logs returns one stream of a sandbox's output (engine.Stdout or
// engine.Stderr, each its own request, so that they stay apart); with
// follow it goes on until the sandbox exits. The caller closes the reader.
func (c *Client) Logs(ctx context.Context, nameOrID string, stream engine.LogStream, follow bool) (io.ReadCloser, error) {
	q := url.Values{"stream": {string(stream)}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, c.http, http.MethodGet, sandboxPath(nameOrID, "logs"), q, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

func sandboxPath(nameOrID, op string) string {
	p := "/v1/sandboxes/" + url.PathEscape(nameOrID)
	if op != "" {
		p += "/" + op
	}
	return p
}

func (c *Client) getJSON(ctx context.Context, path string, q url.Values, out any) error {
	resp, err := c.do(ctx, c.http, http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("read response of %s: %w", path, err)
	}
	return nil
}

func (c *Client) doNoContent(ctx context.Context, method, path string, q url.Values) error {
	resp, err := c.do(ctx, c.http, method, path, q, nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// do sends one request and turns a non-2xx answer into an *Error.
func (c *Client) do(ctx context.Context, hc *http.Client, method, path string, q url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	// path is already escaped (sandboxPath), so it is joined as text.
	u := "http://usernet" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.transportError(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	var e ErrorResponse
	if json.Unmarshal(data, &e) != nil || e.Message == "" {
		e.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	return nil, &Error{StatusCode: resp.StatusCode, Message: e.Message, Kind: e.Kind}
}

// transportError words a failure to reach the daemon.
func (c *Client) transportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &UnreachableError{Socket: c.socket, Err: err}
}

// UnreachableError means no daemon answered on the socket.
type UnreachableError struct {
	Socket string
	Err    error
}

// Error names the socket and what went wrong.
func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the usernet daemon on %s: %v", e.Socket, e.Err)
}

// Unwrap returns the dial or transport error, so that errors.Is finds
// syscall.ENOENT (no socket) or syscall.ECONNREFUSED (nobody listening).
func (e *UnreachableError) Unwrap() error { return e.Err }
