// Package nat connects a usernet network to the real network through
// ordinary host sockets, the way slirp4netns and pasta do, and publishes
// host ports into the network.
//
// Two directions, two types:
//
//   - Outbound is the gateway's handler for traffic the guests send to
//     addresses the gateway does not own (it implements stack.TCPHandler,
//     stack.UDPHandler and stack.EchoHandler). TCP connections are relayed
//     to a host socket dialed first (a failed dial becomes a RST), UDP
//     datagrams travel over one connected host socket per flow, and ICMP
//     echo requests go out through a ping or raw socket when the host allows
//     one; nothing is ever answered on behalf of another host.
//   - Forwards listens on host ports and carries each connection or UDP
//     flow into the network through a Dialer (the *stack.Gateway), keeping
//     the client's source address when it is not a loopback address. A
//     sandbox that lends sockets made inside its namespace (Direct,
//     direct.go) gets its TCP connections without the gateway, spliced
//     kernel socket to kernel socket, with the same source addresses.
//
// Both use the same relay (relay.go) and, for UDP, the same flow table
// (flowtable.go). The flow table is a plain data structure driven by the
// caller's clock; the goroutines and sockets live around it.
package nat
