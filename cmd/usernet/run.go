package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/usernet/usernet/api"
	"github.com/usernet/usernet/engine"
	"golang.org/x/sys/unix"
)

// runOptions are the flags of `usernet run`.
type runOptions struct {
	detach      bool
	autoRemove  bool
	interactive bool
	tty         bool
	publishAll  bool
	bypass      bool
	name        string
	hostname    string
	network     string
	publish     []string
	expose      []string
	env         []string
	dns         []string
	dnsSearch   []string
	addHosts    []string
}

func newRunCmd(e *env) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [OPTIONS] [--] COMMAND [ARG...]",
		Short: "Run a command in a new sandbox",
		Long: "Run a command in a new sandbox with its own network namespace. In the foreground\n" +
			"the command gets usernet's stdin, stdout and stderr, signals sent to usernet are\n" +
			"passed on to it, and usernet exits with its exit status.",
		Example: "  usernet run --rm -p 8080:80 -- python3 -m http.server 80\n" +
			"  usernet run -d --name web -p 127.0.0.1::80 busybox httpd -f -p 80",
		Args: argsAtLeast(1, "the command to run"),
		RunE: withStatus(statusUsage, func(cmd *cobra.Command, args []string) error {
			return runSandbox(cmd.Context(), e, &o, args)
		}),
	}
	f := cmd.Flags()
	// Flags after the command belong to the command.
	f.SetInterspersed(false)
	f.BoolVarP(&o.detach, "detach", "d", false, "run in the background and print the sandbox ID")
	f.BoolVar(&o.autoRemove, "rm", false, "remove the sandbox when the command exits")
	f.BoolVarP(&o.interactive, "interactive", "i", false, "keep stdin open")
	f.BoolVarP(&o.tty, "tty", "t", false, "give the command the terminal (stdin must be one)")
	f.StringVar(&o.name, "name", "", "name the sandbox")
	f.StringVar(&o.hostname, "hostname", "", "hostname inside the sandbox")
	f.StringVar(&o.network, "network", "bridge", "network: bridge, host, none or a network made with network create")
	f.StringArrayVarP(&o.publish, "publish", "p", nil, "publish ports: [hostIP:][hostPort[-end]:]containerPort[-end][/tcp|udp]")
	f.BoolVarP(&o.publishAll, "publish-all", "P", false, "publish every exposed port on a free host port")
	f.StringArrayVar(&o.expose, "expose", nil, "expose a port or range: PORT[-END][/tcp|udp]")
	f.StringArrayVarP(&o.env, "env", "e", nil, "set an environment variable: K=V (or K to copy it from here)")
	f.StringArrayVar(&o.dns, "dns", nil, "nameserver for the sandbox's resolv.conf")
	f.StringArrayVar(&o.dnsSearch, "dns-search", nil, "search domain for the sandbox's resolv.conf")
	f.StringArrayVar(&o.addHosts, "add-host", nil, "add NAME:IP to the sandbox's /etc/hosts")
	f.BoolVar(&o.bypass, "bypass", false, "give the sandbox's connections to the host and beyond host sockets (kernel speed; they show host addresses)")
	return cmd
}

// request turns the options and arguments into an API request, checking
// everything that can be checked without the daemon.
func (o *runOptions) request(args []string) (api.RunRequest, error) {
	req := api.RunRequest{
		Name:        o.name,
		Hostname:    o.hostname,
		Args:        args,
		TTY:         o.tty,
		Interactive: o.interactive,
		Detach:      o.detach,
		AutoRemove:  o.autoRemove,
		Network:     o.network,
		PublishAll:  o.publishAll,
		Bypass:      o.bypass,
		DNSSearch:   o.dnsSearch,
		Wait:        !o.detach,
	}
	for _, p := range o.publish {
		b, err := api.ParsePortSpec(p)
		if err != nil {
			return api.RunRequest{}, err
		}
		req.Ports = append(req.Ports, b...)
	}
	for _, p := range o.expose {
		ports, err := api.ParseExposeSpec(p)
		if err != nil {
			return api.RunRequest{}, err
		}
		req.Expose = append(req.Expose, ports...)
	}
	env, err := parseEnv(o.env, os.LookupEnv)
	if err != nil {
		return api.RunRequest{}, err
	}
	req.Env = env
	for _, s := range o.dns {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return api.RunRequest{}, fmt.Errorf("invalid --dns %q: not an IP address", s)
		}
		req.DNS = append(req.DNS, a)
	}
	for _, s := range o.addHosts {
		h, err := parseHostEntry(s)
		if err != nil {
			return api.RunRequest{}, err
		}
		req.ExtraHosts = append(req.ExtraHosts, h)
	}
	return req, nil
}

// parseEnv checks -e options. "K" alone copies K from usernet's own
// environment and is dropped when unset there, as docker does.
func parseEnv(opts []string, lookup func(string) (string, bool)) ([]string, error) {
	var env []string
	for _, kv := range opts {
		k, _, hasValue := strings.Cut(kv, "=")
		if k == "" {
			return nil, fmt.Errorf("invalid environment variable %q: the name is empty", kv)
		}
		if hasValue {
			env = append(env, kv)
			continue
		}
		if v, ok := lookup(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env, nil
}

// parseHostEntry parses --add-host NAME:IP (or NAME=IP); an IPv6 address
// may be in brackets.
func parseHostEntry(s string) (engine.HostEntry, error) {
	i := strings.IndexAny(s, ":=")
	if i <= 0 {
		return engine.HostEntry{}, fmt.Errorf("invalid --add-host %q: want NAME:IP", s)
	}
	name, ip := s[:i], s[i+1:]
	if strings.HasPrefix(ip, "[") && strings.HasSuffix(ip, "]") {
		ip = ip[1 : len(ip)-1]
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		return engine.HostEntry{}, fmt.Errorf("invalid --add-host %q: %q is not an IP address", s, ip)
	}
	return engine.HostEntry{Host: name, IP: a}, nil
}

// runSandbox is `usernet run`.
func runSandbox(ctx context.Context, e *env, o *runOptions, args []string) error {
	req, err := o.request(args)
	if err != nil {
		return err
	}
	if o.tty && !o.detach && !isTerminal(e.in) {
		return errors.New("the input device is not a TTY")
	}
	var files []*os.File
	if !o.detach {
		var release func()
		if files, release, err = passable(e.stdio); err != nil {
			return err
		}
		defer release()
	}
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	// Catch signals before the sandbox exists, so that one arriving while
	// it starts is delivered rather than killing usernet.
	var fw *forwarder
	if !o.detach {
		fw = catchSignals(e.err, o.tty)
		defer fw.stop()
	}
	// Raw mode before the start, so that the command's first output and
	// the user's first keys already pass through unprocessed.
	eol := "\n"
	if o.tty && !o.detach {
		restore, err := rawTerminal(e)
		if err != nil {
			return err
		}
		defer restore()
		eol = "\r\n"
	}
	started, st, err := c.Run(ctx, req, files)
	if err != nil {
		return startFailure(err)
	}
	for _, w := range started.Warnings {
		fmt.Fprint(e.err, "WARNING: "+w+eol)
	}
	if o.detach {
		fmt.Fprintln(e.out, started.ID)
		return nil
	}
	defer st.Close()
	fw.start(func(sig os.Signal) error { return c.Kill(context.WithoutCancel(ctx), started.ID, toSyscall(sig)) })
	code, err := st.Wait()
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", shortID(started.ID), err)
	}
	return &exitError{code: code}
}

// startFailure gives a failed run or exec its exit status: docker's 127
// and 126 when the command itself is at fault, 125 otherwise.
func startFailure(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Kind {
		case api.KindCommandNotFound:
			return &exitError{code: statusNotFound, err: err}
		case api.KindCommandNotExecutable:
			return &exitError{code: statusCannotRun, err: err}
		}
	}
	return &exitError{code: statusUsage, err: err}
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// passable returns the three streams to pass to the daemon. A stream that
// is closed (usernet started with <&- or >&-) is replaced by /dev/null,
// which the command then sees as closed-ish, instead of failing the
// sendmsg. release closes what passable opened.
func passable(s stdio) (files []*os.File, release func(), err error) {
	var opened []*os.File
	release = func() {
		for _, f := range opened {
			f.Close()
		}
	}
	for _, f := range []*os.File{s.in, s.out, s.err} {
		if f != nil {
			if _, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); err == nil {
				files = append(files, f)
				continue
			}
		}
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			release()
			return nil, nil, err
		}
		opened = append(opened, null)
		files = append(files, null)
	}
	return files, release, nil
}

// shortID is the 12-digit form of a sandbox or network ID.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
