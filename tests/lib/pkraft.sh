# shellcheck shell=bash
# Shared by the scripts under tests/ that start pkraft nodes from config files.

# pkraft_bench ARGS...: runs pkraft-bench, which picks ports and runs local clusters for every
# script: $PKRAFT_BENCH, else the newest build of this checkout (under CARGO_TARGET_DIR or
# target/; any profile does). Not the build under test: an older build A of `make bench-ab` may
# not have these subcommands.
pkraft_bench() {
  local bin=${PKRAFT_BENCH:-} target=${CARGO_TARGET_DIR:-target} candidate
  # A plain test, not `ls -t`: ls fails when one profile was never built (a clean clone has
  # no release build), which under `set -e -o pipefail` would end the calling script.
  if [ -z "$bin" ]; then
    for candidate in "$target/release/pkraft-bench" "$target/debug/pkraft-bench"; do
      if [ -x "$candidate" ] && { [ -z "$bin" ] || [ "$candidate" -nt "$bin" ]; }; then
        bin=$candidate
      fi
    done
  fi
  if [ -z "$bin" ]; then
    echo "pkraft-bench is not built (cargo build -p pkraft-bench)" >&2
    return 2
  fi
  "$bin" "$@"
}

# ports_taken: the file of the ports handed out in this run, so that none is handed out twice:
# PKRAFT_PORTS_TAKEN, else `ports-taken` in the script's work dir ($work), removed with it.
ports_taken() {
  echo "${PKRAFT_PORTS_TAKEN:-${work:?set work, the temp dir of the script, before picking ports}/ports-taken}"
}

# loopback_port: a port free on 127.0.0.1 for TCP and UDP, below the kernel's ephemeral range
# (a process restarted on it finds it free), never handed out twice in this run
# (pkraft-testkit's `free_loopback_ports`, the one port picker of the tests and benchmarks).
loopback_port() {
  pkraft_bench free-ports --taken "$(ports_taken)"
}

# limits_off_toml: prints the TOML that turns the abuse limits off (HTTP rate limits and DNS
# response rate limiting; pkraft-testkit's LIMITS_OFF_TOML). For load from one loopback address
# (benchmarks, memory runs), which the limits would otherwise cap by design. Set
# PKRAFT_EXTRA_TOML to it (or to any whole sections): both config writers append it.
limits_off_toml() {
  pkraft_bench limits-off-toml
}

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
# [pkraft-bench cluster config flags: --origin O, --learner]: writes the config of a cluster node
# on fixed ports (`pkraft-bench cluster config`, the writer of cluster_up); JOIN_PEER empty
# bootstraps a new cluster, otherwise the node joins through that peer address.
# PKRAFT_EXTRA_TOML is appended.
cluster_node_config() {
  local file=$1 id=$2 data_dir=$3 http=$4 dns=$5 peer=$6 admin=$7 secret=$8 join=$9 extra=()
  shift 9
  [ -z "$join" ] || extra+=(--join "$join")
  if [ -n "${PKRAFT_EXTRA_TOML:-}" ]; then
    printf '%s\n' "$PKRAFT_EXTRA_TOML" >"$file.extra"
    extra+=(--extra-toml "$file.extra")
  fi
  pkraft_bench cluster config --out "$file" --id "$id" --data-dir "$data_dir" --http "$http" \
    --dns "$dns" --peer "$peer" --admin "$admin" --secret "$secret" "${extra[@]}" "$@"
}

# wait_for_voters BIN ADMIN_ADDR COUNT SECONDS: waits until the cluster of the node whose admin
# listener is ADMIN_ADDR has a leader that confirms it leads and COUNT voters that have applied
# a settled (not joint) membership; status 1 after SECONDS. (BIN is not used any more.)
wait_for_voters() {
  pkraft_bench cluster settled --admin "$2" --voters "$3" --timeout-secs "$4" >/dev/null
}

# A local cluster (`pkraft-bench cluster`): the caller declares `declare -A node_pid node_http
# node_dns node_admin` (and node_https with --https-cert).
#
# cluster_up BIN_DIR WORK COUNT SECRET [pkraft-bench cluster up flags: --origin O, --https-cert C
# --https-key K, --peer-delay-ms D --peer-jitter-ms J]: writes the configs of nodes 1..COUNT in
# WORK (node 1 bootstraps, the others join through it; fixed loopback ports; PKRAFT_EXTRA_TOML
# appended), starts each in its own process group and waits until the cluster has settled.
# Fills node_pid, node_http (relay URL), node_dns (port), node_admin (host:port) and node_https
# (port); remembers BIN_DIR and WORK for cluster_start_node. cluster_down WORK stops it all.
cluster_up() {
  cluster_bin=$1 cluster_work=$2
  local count=$3 secret=$4 lines extra=()
  shift 4
  mkdir -p "$cluster_work"
  if [ -n "${PKRAFT_EXTRA_TOML:-}" ]; then
    printf '%s\n' "$PKRAFT_EXTRA_TOML" >"$cluster_work/extra.toml"
    extra=(--extra-toml "$cluster_work/extra.toml")
  fi
  lines=$(pkraft_bench cluster up --pkraft "$cluster_bin/pkraft" --work "$cluster_work" \
    --nodes "$count" --secret "$secret" --taken "$(ports_taken)" "${extra[@]}" "$@") || return 1
  cluster_read_nodes <<<"$lines"
}

# cluster_start_node N: (re)starts node N from its config, on its ports, keeping its data dir;
# updates node_pid; status 1 if it exits or does not answer /healthz within 60 s.
cluster_start_node() {
  local line
  line=$(pkraft_bench cluster start --pkraft "$cluster_bin/pkraft" --work "$cluster_work" "$1") || return 1
  cluster_read_nodes <<<"$line"
}

# Reads `id pid http_url dns_port admin peer https_port|- log` lines into the caller's node
# arrays (node_https only with --https-cert).
cluster_read_nodes() {
  local id pid http dns admin _peer https _log
  while read -r id pid http dns admin _peer https _log; do
    # shellcheck disable=SC2034,SC2004  # the caller's arrays, associative or indexed: $id
    node_pid[$id]=$pid node_http[$id]=$http node_dns[$id]=$dns node_admin[$id]=$admin
    # shellcheck disable=SC2034,SC2004
    [ "$https" = - ] || node_https[$id]=$https
  done
}

# cluster_down WORK: stops every process started for the cluster in WORK (its nodes, their
# restarts, delay proxies): SIGTERM to each process group, SIGKILL half a second later.
cluster_down() {
  [ -d "$1" ] && pkraft_bench cluster down --work "$1"
  return 0
}

# cluster_leader N: the leader node N knows of, as the leader itself confirms; empty if none.
cluster_leader() {
  pkraft_bench cluster leader --admin "${node_admin[$1]}" 2>/dev/null || true
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

# wait_idle TICKS_FN [SECONDS]: until the CPU ticks TICKS_FN prints (the servers' utime + stime)
# grow by at most 1 over 0.5 s; status 1 if they still do after SECONDS (10 by default).
# Benchmarks run it between measurements, so one system's leftover work does not load the next.
wait_idle() {
  local before after
  for _ in $(seq 1 $((${2:-10} * 2))); do
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

# print_log_tails DIR: the last 20 lines of every *.log in DIR and two levels below it (a local
# cluster's, `cluster_up`), on stderr (for a failing script).
print_log_tails() {
  local f
  for f in "$1"/*.log "$1"/*/*.log "$1"/*/*/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  return 0
}

# The iroh-dns-server the benchmarks compare with: 1.4.1, built once into PKRAFT_BENCH_CACHE
# (~/.cache/pkraft-bench by default). On x86_64 it is built with the curve25519-dalek backend cfg
# that .cargo/config.toml gives pkraft (AVX-512 IFMA, picked at start when the CPU has it), so both
# run their ed25519 checks on the machine's fastest code: each peer at its best. `cargo install`
# reads no repository's config, hence RUSTFLAGS (and CARGO_ENCODED_RUSTFLAGS, which cargo would
# take over RUSTFLAGS, is unset for it). The directory name says how it was built, so an install
# from before this rule (plain AVX2) is never taken for this one.
iroh_dns_server_version=1.4.1
iroh_dns_server_build() {
  if [ "$(uname -m)" = x86_64 ]; then echo dalek-avx512; else echo default; fi
}
iroh_dns_server_root() {
  echo "${PKRAFT_BENCH_CACHE:-$HOME/.cache/pkraft-bench}/iroh-dns-server-$iroh_dns_server_version-$(iroh_dns_server_build)"
}
iroh_dns_server_bin() { echo "$(iroh_dns_server_root)/bin/iroh-dns-server"; }
# install_iroh_dns_server: builds it unless it is there (one time, several minutes).
install_iroh_dns_server() {
  local root rustflags=${RUSTFLAGS:-}
  root=$(iroh_dns_server_root)
  [ -x "$root/bin/iroh-dns-server" ] && return 0
  if [ "$(iroh_dns_server_build)" = dalek-avx512 ]; then
    rustflags="$rustflags --cfg curve25519_dalek_backend=\"avx512\""
  fi
  echo "installing iroh-dns-server $iroh_dns_server_version into $root (one time, several minutes)" >&2
  env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS="$rustflags" \
    CARGO_TARGET_DIR="${PKRAFT_BENCH_CACHE:-$HOME/.cache/pkraft-bench}/target" \
    cargo install iroh-dns-server --version "$iroh_dns_server_version" --locked --root "$root" >&2
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

# build_revision REV PROFILE OUT_DIR PACKAGE...: the binaries of PACKAGE... as commit REV builds
# them (PROFILE release or debug), from `git archive` alone (never the work tree, nor its
# .cargo/config.toml: the sources are extracted outside it), installed into OUT_DIR; nothing is
# built when OUT_DIR already holds them all. REV's own Cargo.lock is used
# (--locked). The target dir beside OUT_DIR (its parent's target/) keeps later builds of
# nearby revisions incremental. Fails naming REV when this clone lacks it (a shallow clone
# needs `git fetch --unshallow`). Progress goes to stderr.
build_revision() {
  local rev=$1 profile=$2 out=$3 package missing=() src flags=()
  shift 3
  for package in "$@"; do [ -x "$out/$package" ] || missing+=("$package"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  git cat-file -e "$rev^{commit}" 2>/dev/null || {
    echo "build_revision: this clone lacks revision $rev (a shallow clone needs" \
      "'git fetch --unshallow')" >&2
    return 2
  }
  [ "$profile" = release ] && flags=(--release)
  local parent commit
  # For the binary's build record: the exported sources are no clone of their own.
  commit=$(git rev-parse --short=12 "$rev^{commit}")
  mkdir -p "$(dirname "$out")"
  parent=$(cd "$(dirname "$out")" && pwd)
  # A directory of this call's own (two builds of one commit, from two clones, must not share
  # it), outside this repository: cargo reads .cargo/config.toml in every directory above the
  # one it runs in, so sources extracted under the work tree would build with the work tree's
  # flags (its ed25519 arithmetic), not REV's own. Removed when the build ends either way.
  src=$(mktemp -d "${TMPDIR:-/tmp}/pkraft-build-$commit.XXXXXX")
  # -m: the files get the time of extraction, not the commit's. With the commit's, cargo would
  # take a shared target dir's crates, built from a later commit, for newer than an earlier
  # commit's sources and reuse them (it compares times).
  git archive "$rev" | tar -x -m -C "$src"
  local args=() p
  for p in "${missing[@]}"; do args+=(-p "$p"); done
  echo "build_revision: building ${missing[*]} of $rev ($profile)" >&2
  if ! (cd "$src" && PKRAFT_BUILD_COMMIT=$commit CARGO_TARGET_DIR=$parent/target \
    cargo build "${flags[@]}" --locked "${args[@]}" >&2); then
    rm -rf "$src"
    return 1
  fi
  rm -rf "$src"
  for p in "${missing[@]}"; do install -D -m 0755 "$parent/target/$profile/$p" "$out/$p"; done
}
