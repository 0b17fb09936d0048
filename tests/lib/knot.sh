# shellcheck shell=bash
# Shared by tests/bench/run.sh and tests/bench/cold.sh: Knot DNS (knotd, Debian package `knot`)
# serving one zone file on a loopback port, everything it writes (pid file, control socket,
# timer/journal databases) kept in one directory.

# knot_setup DIR PORT ORIGIN ZONE_FILE: copies the zone into DIR and writes DIR/knot.conf. Start
# Knot with `knotd -c DIR/knot.conf` (it stays in the foreground). KNOT_UDP_WORKERS (default 1)
# UDP threads: Knot binds one SO_REUSEPORT socket per UDP worker by itself. KNOT_TCP_WORKERS
# (default: as many as the UDP workers) TCP threads, each on its own socket (`tcp-reuseport`).
#
# Set up for answering from memory and nothing else, Knot's fast path: the zone is loaded whole
# from the file (`zonefile-load: whole`), no journal (`journal-content: none`, so no differences
# are computed or stored), never written back (`zonefile-sync: -1`), no DNSSEC, no extra
# semantic checks. One background worker (zone loading) is enough for one static zone. `user`
# is not set: knotd keeps running as whoever starts it (root or not; it needs no privilege for
# a port above 1024).
knot_setup() {
  local dir=$1 port=$2 origin=$3 zone=$4 udp=${KNOT_UDP_WORKERS:-1}
  local tcp=${KNOT_TCP_WORKERS:-${KNOT_UDP_WORKERS:-1}}
  mkdir -p "$dir"
  cp "$zone" "$dir/$origin.zone"
  cat >"$dir/knot.conf" <<CONF
server:
  rundir: "$dir"
  pidfile: "$dir/knot.pid"
  listen: 127.0.0.1@$port
  udp-workers: $udp
  tcp-workers: $tcp
  tcp-reuseport: on
  background-workers: 1
log:
  - target: stderr
    any: info
database:
  storage: "$dir"
control:
  listen: "$dir/knot.sock"
template:
  - id: default
    storage: "$dir"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
    semantic-checks: off
    dnssec-signing: off
zone:
  - domain: "$origin"
    file: "$origin.zone"
CONF
}
