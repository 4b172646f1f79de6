#!/usr/bin/env bash
# usernet quickstart: Docker's single-host bridge network, as an ordinary user.
#
# What this walks through (the classic `docker run` networking lesson):
#   1. the networks every usernet daemon has: bridge, host, none;
#   2. a web server in a sandbox, published on a host port and fetched from the host;
#   3. two sandboxes on the default bridge reaching each other by address;
#   4. a sandbox reaching a server on the host through the gateway address.
#
# Run it as yourself, not root:   ./examples/quickstart.sh
# It needs usernet on PATH (or USERNET=/path/to/usernet), and curl, ping and
# python3 on the host; sandboxes see the host's files, so they use the same tools.
# Ports: WEB_PORT (default 5000) is published, HOST_PORT (default 8000) is a
# server on the host's loopback. It exits non-zero at the first step that fails,
# and removes everything it started either way.
set -euo pipefail

USERNET=${USERNET:-usernet}
WEB_PORT=${WEB_PORT:-5000}
HOST_PORT=${HOST_PORT:-8000}

# Names are unique per daemon, like Docker's; a suffix keeps this script from
# clashing with sandboxes you already have.
suffix=$$
web=qs-web-$suffix
u1=qs-u1-$suffix
u2=qs-u2-$suffix

step() { printf '\n==> %s\n' "$*"; }
# run prints the command, then runs it; show prints a command line before
# the script captures that command's output.
run() { printf '$ %s\n' "$*"; "$@"; }
show() { printf '$ %s\n' "$*"; }
fail() { printf 'quickstart: FAILED: %s\n' "$*" >&2; exit 1; }

workdir=$(mktemp -d)
host_server=
cleanup() {
	# `rm -f` stops and removes a sandbox in one go, as with Docker.
	"$USERNET" rm -f "$web" "$u1" "$u2" >/dev/null 2>&1 || true
	if [ -n "$host_server" ]; then kill "$host_server" 2>/dev/null || true; fi
	rm -rf "$workdir"
}
trap cleanup EXIT

# field SANDBOX KEY: one value from `usernet inspect`, which prints the same
# JSON as `docker inspect`, e.g. field web IPAddress.
field() {
	"$USERNET" inspect "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["NetworkSettings"][sys.argv[1]])' "$2"
}

# wait_http URL: poll until URL answers (a server takes a moment to start), at most 10s.
wait_http() {
	for _ in $(seq 50); do
		if curl -fsS --max-time 2 "$1" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}

step "1. Networks. There is no docker0 bridge in the kernel: the bridge network is a switch inside the usernet daemon (started on demand by the first command)."
run "$USERNET" network ls
run "$USERNET" network inspect bridge
# docker network inspect bridge shows Subnet 172.17.0.0/16 and Gateway 172.17.0.1; so does usernet.
subnet=$("$USERNET" network inspect bridge | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["IPAM"]["Config"][0]["Subnet"])')
[ "$subnet" = 172.17.0.0/16 ] || fail "bridge subnet is $subnet, not 172.17.0.0/16"

step "2. A web server in a sandbox, published on host port $WEB_PORT (docker run -d --name web -p 5000:80 nginx)."
# The sandbox has its own network namespace: port 80 inside is free and
# binding it needs no privilege on the host. The host's files are visible, so
# python3 serves a directory we make here.
echo "hello from a usernet sandbox" >"$workdir/index.html"
run "$USERNET" run -d --name "$web" -p "$WEB_PORT:80" python3 -m http.server 80 --bind 0.0.0.0 --directory "$workdir"
# `port` shows the mapping exactly like `docker port web`:  80/tcp -> 0.0.0.0:5000
show "$USERNET" port "$web"
mapping=$("$USERNET" port "$web")
echo "$mapping"
[ "$mapping" = "80/tcp -> 0.0.0.0:$WEB_PORT" ] || fail "usernet port $web printed '$mapping'"
# Fetch it from the host. The daemon listens on 0.0.0.0:$WEB_PORT and relays
# each connection to 80/tcp inside the sandbox.
wait_http "http://127.0.0.1:$WEB_PORT/" || fail "the published port $WEB_PORT does not answer"
run curl -fsS "http://127.0.0.1:$WEB_PORT/"

step "3. Two sandboxes on the default bridge reach each other by address."
run "$USERNET" run -d --name "$u1" sleep infinity
run "$USERNET" run -d --name "$u2" sleep infinity
# Addresses come from 172.17.0.2 up, MAC addresses are 02:42 + the address, as with Docker.
u1_ip=$(field "$u1" IPAddress)
u2_ip=$(field "$u2" IPAddress)
echo "$u1 is $u1_ip ($(field "$u1" MacAddress)), $u2 is $u2_ip ($(field "$u2" MacAddress))"
run "$USERNET" exec "$u1" ping -c 3 "$u2_ip" || fail "$u1 cannot ping $u2 at $u2_ip"
run "$USERNET" exec "$u2" ping -c 3 "$u1_ip" || fail "$u2 cannot ping $u1 at $u1_ip"
# By name it does not work here: the default bridge has no name resolution
# (Docker's rule; user-defined networks have it). Each sandbox's /etc/hosts
# knows only itself:
run "$USERNET" exec "$u1" cat /etc/hosts
if "$USERNET" exec "$u1" grep -qw "$u2" /etc/hosts; then fail "$u1's /etc/hosts names $u2"; fi

step "4. A sandbox reaches a server on the host through the gateway address."
# A web server on the host, bound to loopback only. From inside a sandbox the
# gateway address (172.17.0.1) leads to the host's 127.0.0.1 (start the daemon
# with --disable-host-loopback to forbid that).
mkdir "$workdir/host"
echo "hello from the host" >"$workdir/host/index.html"
python3 -m http.server "$HOST_PORT" --bind 127.0.0.1 --directory "$workdir/host" >"$workdir/host.log" 2>&1 &
host_server=$!
wait_http "http://127.0.0.1:$HOST_PORT/" || fail "the host server on 127.0.0.1:$HOST_PORT did not start"
gateway=$(field "$u1" Gateway)
run "$USERNET" exec "$u1" ping -c 1 "$gateway" || fail "$u1 cannot ping its gateway $gateway"
show "$USERNET" exec "$u1" curl -fsS --max-time 5 "http://$gateway:$HOST_PORT/"
answer=$("$USERNET" exec "$u1" curl -fsS --max-time 5 "http://$gateway:$HOST_PORT/") || fail "$u1 cannot reach the host at $gateway:$HOST_PORT"
echo "$answer"
[ "$answer" = "hello from the host" ] || fail "unexpected answer from the host: $answer"

step "Done. Everything still running, as docker ps would show it; the exit trap now runs usernet rm -f $web $u1 $u2."
run "$USERNET" ps
# The daemon itself keeps running (like dockerd) and serves the next command.
