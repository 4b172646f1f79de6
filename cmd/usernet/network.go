package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"

	"github.com/usernet/usernet/api"
)

func newNetworkCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Manage networks",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newNetworkCreateCmd(e), newNetworkLsCmd(e), newNetworkInspectCmd(e), newNetworkRmCmd(e), newNetworkPruneCmd(e))
	return cmd
}

// networkCreateOptions are the flags of `usernet network create`, as
// docker's.
type networkCreateOptions struct {
	driver   string
	subnet   []string
	gateway  []string
	ipRange  []string
	internal bool
	opts     []string
	labels   []string
}

func newNetworkCreateCmd(e *env) *cobra.Command {
	var o networkCreateOptions
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NETWORK",
		Short: "Create a bridge network",
		Long: "Create a user-defined bridge network and print its ID. Without --subnet the next free\n" +
			"pool is used, as Docker does (172.18.0.0/16, 172.19.0.0/16, ... then 192.168.0.0/20 steps);\n" +
			"the gateway is the subnet's first address unless --gateway says otherwise.",
		Example: "  usernet network create mynet\n" +
			"  usernet network create --subnet 10.10.0.0/24 -o com.docker.network.driver.mtu=65520 fast\n" +
			"  usernet network create --internal -o com.docker.network.bridge.enable_icc=false isolated",
		Args: argsRange(1, 1, "exactly one network name"),
		// Every failure is bad input or a refused request and means
		// nothing was created: 125, as when run fails before its command.
		RunE: withStatus(statusUsage, func(cmd *cobra.Command, args []string) error {
			req, err := o.request(args[0])
			if err != nil {
				return err
			}
			c, err := e.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			id, err := c.NetworkCreate(cmd.Context(), req)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(e.out, id)
			return err
		}),
	}
	f := cmd.Flags()
	f.StringVarP(&o.driver, "driver", "d", "bridge", "driver to manage the network (bridge is the only one)")
	f.StringArrayVar(&o.subnet, "subnet", nil, "subnet in CIDR format, e.g. 172.28.0.0/16")
	f.StringArrayVar(&o.gateway, "gateway", nil, "gateway address of the subnet (default: its first address)")
	f.StringArrayVar(&o.ipRange, "ip-range", nil, "allocate sandbox addresses from this sub-range of the subnet")
	f.BoolVar(&o.internal, "internal", false, "restrict external access to the network (no NAT, no published ports)")
	f.StringArrayVarP(&o.opts, "opt", "o", nil, "driver option KEY=VALUE: com.docker.network.driver.mtu, com.docker.network.bridge.enable_icc")
	f.StringArrayVar(&o.labels, "label", nil, "set metadata on the network, KEY=VALUE")
	return cmd
}

// request parses the flags into an API request, naming the flag and value
// at fault in errors.
func (o *networkCreateOptions) request(name string) (api.NetworkCreateRequest, error) {
	req := api.NetworkCreateRequest{Name: name, Driver: o.driver, Internal: o.internal}
	var err error
	if req.Subnet, err = onePrefix("--subnet", o.subnet); err != nil {
		return req, err
	}
	if req.IPRange, err = onePrefix("--ip-range", o.ipRange); err != nil {
		return req, err
	}
	switch len(o.gateway) {
	case 0:
	case 1:
		if req.Gateway, err = netip.ParseAddr(o.gateway[0]); err != nil {
			return req, fmt.Errorf("invalid --gateway %q: give an IPv4 address such as 172.28.0.1", o.gateway[0])
		}
	default:
		return req, fmt.Errorf("--gateway given %d times: usernet networks have one subnet and one gateway", len(o.gateway))
	}
	if req.Options, err = keyValues("-o", o.opts, false); err != nil {
		return req, err
	}
	if req.Labels, err = keyValues("--label", o.labels, true); err != nil {
		return req, err
	}
	return req, nil
}

// onePrefix parses the one CIDR a repeatable flag may carry; none gives
// the zero Prefix.
func onePrefix(flag string, vals []string) (netip.Prefix, error) {
	switch len(vals) {
	case 0:
		return netip.Prefix{}, nil
	case 1:
		p, err := netip.ParsePrefix(vals[0])
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid %s %q: give an IPv4 prefix in CIDR form, such as 172.28.0.0/16", flag, vals[0])
		}
		return p, nil
	}
	return netip.Prefix{}, fmt.Errorf("%s given %d times: usernet networks have one IPv4 subnet", flag, len(vals))
}

// keyValues parses KEY=VALUE flags; with bare, a KEY alone means an empty
// value (as docker's --label).
func keyValues(flag string, vals []string, bare bool) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(vals))
	for _, kv := range vals {
		k, v, ok := strings.Cut(kv, "=")
		if k == "" || !ok && !bare {
			return nil, fmt.Errorf("invalid %s %q: use KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

// networkLsOptions are the flags of `usernet network ls`.
type networkLsOptions struct {
	quiet bool
}

func newNetworkLsCmd(e *env) *cobra.Command {
	var o networkLsOptions
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List networks",
		Args:    cobra.NoArgs,
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			c, err := e.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			nets, err := c.Networks(cmd.Context())
			if err != nil {
				return err
			}
			if o.quiet {
				for _, n := range nets {
					if _, err := fmt.Fprintln(e.out, shortID(n.ID)); err != nil {
						return err
					}
				}
				return nil
			}
			return writeNetworks(e.out, nets)
		}),
	}
	cmd.Flags().BoolVarP(&o.quiet, "quiet", "q", false, "only display network IDs")
	return cmd
}

func newNetworkInspectCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NETWORK...",
		Short: "Show networks' details as JSON (docker network inspect's shape)",
		Args:  argsAtLeast(1, "the network to inspect"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return inspectEach(cmd.Context(), e, args, (*api.Client).NetworkInspect)
		}),
	}
}

func newNetworkRmCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NETWORK...",
		Aliases: []string{"remove"},
		Short:   "Remove user-defined networks",
		Args:    argsAtLeast(1, "the network to remove"),
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return forEachNameEcho(cmd.Context(), e, args, func(c *api.Client, name string) error {
				return c.NetworkRemove(cmd.Context(), name)
			})
		}),
	}
}

// networkPruneOptions are the flags of `usernet network prune`.
type networkPruneOptions struct {
	force bool
}

// pruneWarning is docker's question before a prune.
const pruneWarning = "WARNING! This will remove all custom networks not used by at least one sandbox.\n" +
	"Are you sure you want to continue? [y/N] "

func newNetworkPruneCmd(e *env) *cobra.Command {
	var o networkPruneOptions
	cmd := &cobra.Command{
		Use:   "prune [OPTIONS]",
		Short: "Remove all unused user-defined networks",
		Args:  cobra.NoArgs,
		RunE: withStatus(statusFailed, func(cmd *cobra.Command, args []string) error {
			return pruneNetworks(cmd.Context(), e, o)
		}),
	}
	cmd.Flags().BoolVarP(&o.force, "force", "f", false, "do not prompt for confirmation")
	return cmd
}

func pruneNetworks(ctx context.Context, e *env, o networkPruneOptions) error {
	if !o.force {
		fmt.Fprint(e.out, pruneWarning)
		line, _ := bufio.NewReader(e.in).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			// Not confirmed: docker does nothing and succeeds. At the
			// end of input the prompt's line is still open.
			if !strings.HasSuffix(line, "\n") {
				fmt.Fprintln(e.out)
			}
			return nil
		}
	}
	c, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	names, err := c.NetworkPrune(ctx)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return nil
	}
	_, err = fmt.Fprintf(e.out, "Deleted Networks:\n%s\n", strings.Join(names, "\n"))
	return err
}
