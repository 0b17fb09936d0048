# shellcheck shell=bash
# Shared by the scripts under tests/ that start pkraft nodes from config files.

# loopback_port: a TCP port free on 127.0.0.1 right now.
loopback_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The abuse limits off: HTTP rate limits and DNS response rate limiting. For load from one
# loopback address (benchmarks, memory runs), which the limits would otherwise cap by design.
# Set PKRAFT_EXTRA_TOML to it (or to any whole sections): both config writers append it.
# shellcheck disable=SC2034  # used by the scripts that source this file
LIMITS_OFF_TOML='[rate_limit]
publish = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }
resolve = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }
doh = { per_client = { per_second = 0, burst = 0 }, global = { per_second = 0, burst = 0 } }
[dns.rrl]
responses_per_second = 0'

# single_node_config FILE DATA_DIR HTTP_ADDR DNS_ADDR [DNS_LINES] [MORE_TOML]: writes the config of
# a node that bootstraps its own one-node cluster, with peer and admin listeners on any loopback
# port, origin pkarr.test unless DNS_LINES sets `origins`. DNS_LINES go into [dns]; MORE_TOML
# (whole sections) is appended.
single_node_config() {
  local file=$1 data_dir=$2 http=$3 dns=$4 dns_lines=${5:-} more=${6:-}
  [[ "$dns_lines" == *origins* ]] || dns_lines="origins = [\"pkarr.test\"]
$dns_lines"
  cat >"$file" <<TOML
data_dir = "$data_dir"
[http]
listen = "$http"
[dns]
listen = "$dns"
$dns_lines
[cluster]
bootstrap = true
peer_listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
$more
${PKRAFT_EXTRA_TOML:-}
TOML
}

# cluster_node_config FILE NODE_ID DATA_DIR HTTP_ADDR DNS_ADDR PEER_ADDR ADMIN_ADDR SECRET JOIN_PEER
# [ORIGIN]: writes the config of a cluster node; JOIN_PEER empty bootstraps a new cluster,
# otherwise the node joins through that peer address. Origin pkarr.test unless given.
cluster_node_config() {
  local file=$1 id=$2 data_dir=$3 http=$4 dns=$5 peer=$6 admin=$7 secret=$8 join=$9
  local origin=${10:-pkarr.test} membership="bootstrap = true"
  [ -z "$join" ] || membership="join = [\"$join\"]"
  cat >"$file" <<TOML
node_id = $id
data_dir = "$data_dir"
[http]
listen = "$http"
[dns]
listen = "$dns"
origins = ["$origin"]
[cluster]
peer_listen = "$peer"
secret = "$secret"
$membership
[admin]
listen = "$admin"
${PKRAFT_EXTRA_TOML:-}
TOML
}

# wait_for_voters BIN ADMIN_ADDR COUNT SECONDS: waits until the node whose admin listener is
# ADMIN_ADDR reports COUNT voters that have applied a settled (not joint) membership; status 1
# after SECONDS.
wait_for_voters() {
  local bin=$1 admin=$2 count=$3 deadline=$((SECONDS + $4)) voters
  while [ "$SECONDS" -lt "$deadline" ]; do
    voters=$("$bin" cluster --admin "$admin" status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
m = s["membership"]
print(0 if m["joint"] else sum(1 for x in s["members"] if x["voter"] and x["status"]
      and (x["status"]["applied_index"] or 0) >= (m["log_index"] or 0)))' 2>/dev/null || echo 0)
    [ "$voters" = "$count" ] && return 0
    sleep 0.1
  done
  return 1
}

# A local cluster for the benchmarks that stop and start its nodes: the caller declares
# `declare -A node_pid node_http node_admin` and sets `cluster_bin` (dir with `pkraft`) and
# `cluster_work` (dir for configs, data and logs).
#
# cluster_configs COUNT SECRET: writes the configs of nodes 1..COUNT (node 1 bootstraps, the
# others join through it) on free loopback ports; fills node_http (relay URL) and node_admin.
cluster_configs() {
  local count=$1 secret=$2 n http dns peer admin join node1_peer=""
  for n in $(seq 1 "$count"); do
    http=$(loopback_port); dns=$(loopback_port); peer=$(loopback_port); admin=$(loopback_port)
    join=""
    if [ "$n" = 1 ]; then node1_peer=$peer; else join="127.0.0.1:$node1_peer"; fi
    cluster_node_config "$cluster_work/$n.toml" "$n" "$cluster_work/$n-data" "127.0.0.1:$http" \
      "127.0.0.1:$dns" "127.0.0.1:$peer" "127.0.0.1:$admin" "$secret" "$join"
    node_http[$n]="http://127.0.0.1:$http/pkarr"; node_admin[$n]="127.0.0.1:$admin"
  done
}

# cluster_start_node N: (re)starts node N from its config, keeping its data dir; records its pid
# in node_pid; status 1 if it exits or does not answer /healthz within 30 s.
cluster_start_node() {
  local n=$1
  RUST_LOG=${RUST_LOG:-warn} setsid "$cluster_bin/pkraft" serve --config "$cluster_work/$n.toml" \
    >>"$cluster_work/$n.log" 2>&1 &
  node_pid[$n]=$!
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "${node_http[$n]%/pkarr}/healthz" && return 0
    kill -0 "${node_pid[$n]}" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# cluster_leader N: the leader node N knows of, as the leader itself confirms; empty if none.
cluster_leader() {
  local leader
  leader=$("$cluster_bin/pkraft" cluster --admin "${node_admin[$1]}" status --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["leader"] or "")' 2>/dev/null || true)
  [ -n "$leader" ] && [ "$leader" != "$1" ] &&
    leader=$("$cluster_bin/pkraft" cluster --admin "${node_admin[$leader]}" status --json 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["leader"] or "")' 2>/dev/null || true)
  echo "$leader"
}

# wait_exited PID: until the process is gone (or a zombie); status 1 after 30 s.
wait_exited() {
  local state
  for _ in $(seq 1 300); do
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo gone)
    [ "$state" = gone ] || [ "$state" = Z ] && return 0
    sleep 0.1
  done
  return 1
}

# wait_idle TICKS_FN: until the CPU ticks TICKS_FN prints (the servers' utime + stime) grow by at
# most 1 over 0.5 s; status 1 if they still do after 10 s. Benchmarks run it between
# measurements, so one system's leftover work does not load the next.
wait_idle() {
  local before after
  for _ in $(seq 1 20); do
    before=$("$1"); sleep 0.5; after=$("$1")
    [ $((after - before)) -le 1 ] && return 0
  done
  return 1
}

# need_bins NAME BIN_DIR: exits 2 (naming the script NAME) unless BIN_DIR holds pkraft and
# pkraft-bench.
need_bins() {
  [ -x "$2/pkraft" ] && [ -x "$2/pkraft-bench" ] && return 0
  echo "$1: $2/pkraft and $2/pkraft-bench are needed (cargo build --release)" >&2
  exit 2
}

# kill_all PID...: SIGKILL and reap the given processes (test cleanup: bounded, unlike a wait
# after SIGTERM on a process that hangs in shutdown).
kill_all() {
  local p
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# leader_changes_total ADMIN_ADDR...: pkraft_raft_leader_changes_total summed over the nodes with
# these admin listeners (a node that does not answer counts 0).
leader_changes_total() {
  local admin total=0 count
  for admin in "$@"; do
    count=$(curl -sf "http://$admin/metrics" | awk '/^pkraft_raft_leader_changes_total / {print $2}')
    total=$((total + ${count:-0}))
  done
  echo "$total"
}

# stop_process_groups PID...: SIGTERM the process groups these PIDs lead (servers started with
# setsid), then after 0.5 s SIGKILL what is left of them.
stop_process_groups() {
  local pid
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "$@"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}

# process_group_ticks PID...: utime + stime, in clock ticks, of every process in the process
# groups these PIDs lead (a server started with setsid, and what it forked: NSD's servers). The
# fields are counted after the command name, which may hold spaces ("nsd: server 1"); a process
# that is gone counts 0.
process_group_ticks() {
  local sum=0 pid member stat
  for pid in "$@"; do
    for member in $(pgrep -g "$pid" 2>/dev/null || echo "$pid"); do
      stat=$(cat "/proc/$member/stat" 2>/dev/null) || continue
      sum=$((sum + $(echo "${stat##*) }" | awk '{print $12 + $13}')))
    done
  done
  echo "$sum"
}

# print_log_tails DIR: the last 20 lines of every *.log in DIR, on stderr (for a failing script).
print_log_tails() {
  local f
  for f in "$1"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  return 0
}

# iroh_dns_server_config FILE DATA_DIR HTTP_PORT DNS_PORT HTTPS_PORT ORIGIN: the config the
# benchmarks run iroh-dns-server 1.4.1 with, on 127.0.0.1: rate limit off (it would cap PUTs), no
# mainline DHT (no traffic off loopback), no metrics, a self-signed certificate.
iroh_dns_server_config() {
  local file=$1 data_dir=$2 http=$3 dns=$4 https=$5 origin=$6
  cat >"$file" <<TOML
pkarr_put_rate_limit = "disabled"
data_dir = "$data_dir"
[http]
port = $http
bind_addr = "127.0.0.1"
[https]
port = $https
bind_addr = "127.0.0.1"
domains = ["localhost"]
cert_mode = "self_signed"
[dns]
port = $dns
bind_addr = "127.0.0.1"
default_soa = "$origin. hostmaster.$origin. 1 3600 600 1209600 30"
default_ttl = 30
# iroh-dns-server serves its SOA from a zone rooted at "." and refuses to start without it.
origins = ["$origin.", "."]
[metrics]
disabled = true
[mainline]
enabled = false
TOML
}
