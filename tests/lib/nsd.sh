# shellcheck shell=bash
# Shared by tests/bench/run.sh and tests/e2e/nsd_diff.sh: NSD serving one zone file, unprivileged,
# on a loopback port, everything it writes kept in one directory.

# nsd_setup DIR PORT ORIGIN ZONE_FILE: copies the zone into DIR and writes DIR/nsd.conf. Start
# NSD with `nsd -d -c DIR/nsd.conf`. NSD_SERVER_COUNT (default 1) server processes; with more
# than one they share the port with `reuseport: yes`, each on its own sockets, as NSD's
# documentation advises for a multi-core machine.
nsd_setup() {
  local dir=$1 port=$2 origin=$3 zone=$4 servers=${NSD_SERVER_COUNT:-1} reuseport=no
  if [ "$servers" -gt 1 ]; then reuseport=yes; fi
  mkdir -p "$dir"
  cp "$zone" "$dir/$origin.zone"
  cat >"$dir/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$port
  username: ""
  chroot: ""
  zonesdir: "$dir"
  database: ""
  zonelistfile: "$dir/zone.list"
  pidfile: "$dir/nsd.pid"
  xfrdfile: "$dir/xfrd.state"
  xfrdir: "$dir"
  server-count: $servers
  reuseport: $reuseport
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: "$origin"
  zonefile: "$origin.zone"
CONF
}
