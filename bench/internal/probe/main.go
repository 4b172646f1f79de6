package probe

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// Main runs the probe command line: args[0] is a subcommand, the rest are
// its flags. Client subcommands print one Result as JSON on stdout. It
// returns the process exit code.
//
//	serve    -tcp ADDR -udp ADDR [-iperf3 PORT]  echo servers (and iperf3 -s) until SIGTERM
//	tcprr    -addr HOST:PORT -n 20000 -size 64
//	udprr    -addr HOST:PORT -n 20000 -size 64 -timeout 200ms
//	connrate -addr HOST:PORT -n 5000 -parallel 16
//	wait     -addr HOST:PORT -timeout 10s        until a TCP connect succeeds
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: probe serve|tcprr|udprr|connrate|wait [flags]")
		return 2
	}
	fs := flag.NewFlagSet("probe "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		addr     = fs.String("addr", "", "server address host:port")
		n        = fs.Int("n", 20000, "round trips or connections")
		size     = fs.Int("size", 64, "request and response size in bytes")
		parallel = fs.Int("parallel", 16, "connections in flight (connrate)")
		timeout  = fs.Duration("timeout", 0, "per-request timeout (udprr, default 200ms) or total wait (wait, default 10s)")
		tcpAddr  = fs.String("tcp", "", "TCP echo listen address (serve)")
		udpAddr  = fs.String("udp", "", "UDP echo listen address (serve)")
		iperf3   = fs.Int("iperf3", 0, "also run `iperf3 -s -p PORT` (serve)")
	)
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var (
		res Result
		err error
	)
	switch args[0] {
	case "serve":
		err = serve(ctx, *tcpAddr, *udpAddr, *iperf3, stderr)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "wait":
		wctx, cancel := context.WithTimeout(ctx, orDefault(*timeout, 10*time.Second))
		defer cancel()
		if err := WaitTCP(wctx, *addr); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "tcprr":
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		res, err = TCPRR(rctx, *addr, *n, *size)
	case "udprr":
		res, err = UDPRR(ctx, *addr, *n, *size, orDefault(*timeout, 200*time.Millisecond))
	case "connrate":
		res = ConnRate(ctx, *addr, *n, *parallel)
	default:
		fmt.Fprintf(stderr, "probe: unknown subcommand %q\n", args[0])
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// serve runs the echo servers (and iperf3 as a child that dies with us)
// until ctx ends. Listening happens before anything is reported ready:
// the harness finds out by connecting (wait).
func serve(ctx context.Context, tcpAddr, udpAddr string, iperfPort int, stderr io.Writer) error {
	errc := make(chan error, 3)
	if tcpAddr != "" {
		ln, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			return fmt.Errorf("probe serve: %w", err)
		}
		defer ln.Close()
		go func() { errc <- ServeTCP(ln) }()
	}
	if udpAddr != "" {
		pc, err := net.ListenPacket("udp", udpAddr)
		if err != nil {
			return fmt.Errorf("probe serve: %w", err)
		}
		defer pc.Close()
		go func() { errc <- ServeUDP(pc) }()
	}
	if iperfPort != 0 {
		cmd := exec.Command("iperf3", "-s", "-p", strconv.Itoa(iperfPort))
		cmd.Stdout, cmd.Stderr = io.Discard, stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("probe serve: iperf3: %w", err)
		}
		exited := make(chan struct{})
		go func() {
			err := cmd.Wait()
			close(exited)
			errc <- fmt.Errorf("probe serve: iperf3 exited: %v", err)
		}()
		defer func() {
			cmd.Process.Kill()
			<-exited
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
