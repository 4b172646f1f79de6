// Command usernet runs processes in sandboxes with Docker-style networking,
// without privileges. One daemon per user (`usernet daemon`, started on
// demand by every other command) holds the networks; the commands here
// talk to it over its unix socket.
package main

import (
	"context"
	"os"

	"github.com/usernet/usernet/sandbox"
)

func main() {
	// The sandbox agent is this same binary re-executed inside the new
	// namespaces; it must take over before anything else runs.
	if len(os.Args) > 1 && os.Args[1] == sandbox.AgentArg {
		sandbox.AgentMain()
		return
	}
	os.Exit(execute(context.Background(), newStdio(), os.Args[1:]))
}
