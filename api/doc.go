// Package api is usernet's control interface: HTTP with JSON bodies over
// the daemon's unix socket. Server wraps the engine; Client is what the CLI
// (and anyone else) uses. Responses reuse the engine's Docker-shaped JSON
// types, so `curl --unix-socket` shows what `docker inspect` would.
//
// Routes (all under /v1):
//
//	GET    /ping                        "OK" when the daemon answers
//	POST   /sandboxes                   run (RunRequest; stdio passed as descriptors)
//	GET    /sandboxes?all=1             ps
//	GET    /sandboxes/{name}            inspect
//	DELETE /sandboxes/{name}?force=1    rm
//	POST   /sandboxes/{name}/wait       wait for exit (WaitResponse)
//	POST   /sandboxes/{name}/stop?t=S   stop (S: seconds before SIGKILL; 0 at once, -1 never, absent 10)
//	POST   /sandboxes/{name}/kill?signal=N
//	GET    /sandboxes/{name}/logs?stream=stdout|stderr&follow=1
//	                                    one raw stream (default stdout); the
//	                                    two are separate requests rather than
//	                                    one multiplexed body, so neither needs
//	                                    framing and a follower just reads both
//	GET    /sandboxes/{name}/ports      port
//	POST   /sandboxes/{name}/exec       exec (ExecRequest; stdio passed as descriptors)
//	POST   /execs/{id}/kill?signal=N    signal an exec'd command
//	GET    /networks                    network ls
//	GET    /networks/{name}             network inspect
//	POST   /networks                    network create (NetworkCreateRequest; 201 NetworkCreateResponse)
//	DELETE /networks/{name}             network rm (409 while sandboxes are attached)
//	POST   /networks/prune              network prune (NetworkPruneResponse)
//
// Errors are {"message": "..."} with 400 (bad input), 404 (no such
// sandbox or network), 409 (conflict: name or port in use, wrong state) or
// 500. Run and exec answer with newline-delimited JSON: first the started
// object (RunResponse, ExecResponse), then, when the client asked to wait,
// a WaitResponse once the command exits.
//
// Descriptors travel in a preamble before the HTTP request on the same
// connection; see fdconn.go.
package api
