// Command probe is the benchmark's request/response and connection-rate
// client and echo server; see package probe for the subcommands. The
// harness runs it on the host and inside namespaces and sandboxes.
package main

import (
	"os"

	"github.com/usernet/usernet/bench/internal/probe"
)

func main() {
	os.Exit(probe.Main(os.Args[1:], os.Stdout, os.Stderr))
}
