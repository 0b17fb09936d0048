#!/usr/bin/env bash
# End-to-end check of a 3-node cluster with standard clients, before and after its leader is
# killed: `pkraft publish` (the CLI client) writes through one node, then every node answers
# `dig` over UDP and TCP (TXT, A, AAAA, NXDOMAIN with SOA, authoritative) and `kdig` over
# DNS-over-HTTPS (POST and GET, HTTP/2, trusting only the test CA), and `pkraft resolve` reads
# the whole packet over HTTP. Then the leader gets SIGKILL, a new version is published through a
# survivor at once (the CLI retries while the survivors elect a leader), and both survivors serve
# it over every transport.
#
# Usage: tests/e2e/cluster_clients.sh [PKRAFT_BIN]
# Needs: dig (bind9-dnsutils), kdig (knot-dnsutils), python3; .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
bin=${1:-target/debug/pkraft}
tls=$PWD/tests/fixtures/tls
origin=pkarr.test
work=$(mktemp -d)
declare -a pid http https dns admin
cleanup() {
  cluster_down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "cluster-clients: FAIL: $*" >&2
  print_log_tails "$work"
  exit 1
}
for tool in dig kdig python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (bind9-dnsutils, knot-dnsutils, python3)"
done

# --- three nodes, each with plain HTTP, HTTPS (DoH) and DNS on its own loopback ports ---------
secret=cluster-clients-e2e-secret-0123456789
declare -A node_pid node_http node_dns node_admin node_https
RUST_LOG=info cluster_up "$(dirname "$bin")" "$work/cluster" 3 "$secret" --origin "$origin" \
  --https-cert "$tls/localhost.crt" --https-key "$tls/localhost.key" || fail "the cluster did not start"
for n in 1 2 3; do
  http[n]=${node_http[$n]#http://127.0.0.1:} http[n]=${http[n]%/pkarr}
  pid[n]=${node_pid[$n]} dns[n]=${node_dns[$n]} https[n]=${node_https[$n]} admin[n]=${node_admin[$n]#127.0.0.1:}
done

# leader: the id of the node that reports itself leader, among the given ones.
leader() {
  local n
  for n in "$@"; do
    role=$("$bin" cluster --admin "127.0.0.1:${admin[n]}" status --json 2>/dev/null |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["node"]["role"])' 2>/dev/null || true)
    [ "$role" = leader ] && { echo "$n"; return 0; }
  done
  return 1
}

# eventually DESCRIPTION COMMAND...: retries COMMAND for up to 10 s (a follower's replica lags
# its leader by a heartbeat or so).
eventually() {
  local what=$1
  shift
  for _ in $(seq 1 100); do
    "$@" && return 0
    sleep 0.1
  done
  fail "$what"
}

# answers_node N ADDR: node N answers the published records for ADDR over every transport.
answers_node() {
  local n=$1 ip=$2 out
  local name="_iroh.$key.$origin"
  for transport in +notcp +tcp; do
    out=$(dig @127.0.0.1 -p "${dns[n]}" "$transport" +time=2 +tries=1 "$name" TXT +short) || return 1
    [ "$out" = "\"addr=$ip:4433\"" ] || return 1
    out=$(dig @127.0.0.1 -p "${dns[n]}" "$transport" +time=2 +tries=1 "$key.$origin" A +short) || return 1
    [ "$out" = "$ip" ] || return 1
  done
  out=$(dig @127.0.0.1 -p "${dns[n]}" +time=2 +tries=1 "$key.$origin" AAAA +short) || return 1
  [ "$out" = "2001:db8::${ip##*.}" ] || return 1
  for mode in +https +https-get; do
    out=$(kdig @127.0.0.1 -p "${https[n]}" "$mode" +tls-ca="$tls/ca.crt" +tls-hostname=localhost \
      +timeout=2 +retry=0 "$name" TXT +short) || return 1
    [ "$out" = "\"addr=$ip:4433\"" ] || return 1
  done
  out=$("$bin" resolve "$key" --relay "http://127.0.0.1:${http[n]}/pkarr") || return 1
  grep -qF "_iroh.$key. 300 IN TXT \"addr=$ip:4433\"" <<<"$out" || return 1
}

# checks_node N ADDR: answers_node, plus the DNS contract details, failing with what is wrong.
checks_node() {
  local n=$1 ip=$2 out
  eventually "node $n answers for $ip over UDP, TCP, DoH and HTTP" answers_node "$n" "$ip"
  out=$(dig @127.0.0.1 -p "${dns[n]}" +time=2 +tries=1 "_iroh.$key.$origin" TXT +noall +comments) ||
    fail "node $n: dig for the published key failed"
  grep -q 'status: NOERROR' <<<"$out" || fail "node $n: not NOERROR: $out"
  grep -q 'flags: qr aa' <<<"$out" || fail "node $n: answer not authoritative: $out"
  out=$(dig @127.0.0.1 -p "${dns[n]}" +time=2 +tries=1 "_iroh.$unknown.$origin" TXT +noall +comments +authority) ||
    fail "node $n: dig for an unknown key failed"
  grep -q 'status: NXDOMAIN' <<<"$out" || fail "node $n: unknown key not NXDOMAIN: $out"
  grep -q "SOA" <<<"$out" || fail "node $n: NXDOMAIN without SOA: $out"
  out=$(kdig @127.0.0.1 -p "${https[n]}" +https +tls-ca="$tls/ca.crt" +tls-hostname=localhost \
    +timeout=2 +retry=0 "_iroh.$unknown.$origin" TXT) || fail "node $n: kdig DoH for an unknown key failed"
  grep -q 'status: NXDOMAIN' <<<"$out" || fail "node $n: DoH for an unknown key not NXDOMAIN: $out"
}

"$bin" keygen "$work/key" >"$work/key.pub" || fail "pkraft keygen"
key=$(cat "$work/key.pub")
"$bin" keygen "$work/unknown" >"$work/unknown.pub" || fail "pkraft keygen"
unknown=$(cat "$work/unknown.pub")

publish() {
  local n=$1 ip=$2
  "$bin" publish --secret-key "$work/key" --relay "http://127.0.0.1:${http[n]}/pkarr" --attempts 20 \
    "_iroh TXT addr=$ip:4433" "@ A $ip" "@ AAAA 2001:db8::${ip##*.}" >/dev/null ||
    fail "pkraft publish through node $n"
}

first=$(leader 1 2 3) || fail "no leader"
through=$((first % 3 + 1))
publish "$through" 192.0.2.10
for n in 1 2 3; do checks_node "$n" 192.0.2.10; done
echo "cluster-clients: published through node $through (leader $first); nodes 1-3 answer dig UDP/TCP, kdig DoH, pkraft resolve"

# --- SIGKILL the leader, publish through a survivor at once -------------------------------------
kill -KILL "${pid[first]}"
survivors=()
for n in 1 2 3; do [ "$n" = "$first" ] || survivors+=("$n"); done
publish "${survivors[0]}" 192.0.2.11
for n in "${survivors[@]}"; do checks_node "$n" 192.0.2.11; done
second=$(leader "${survivors[@]}") || fail "no leader among the survivors"
echo "cluster-clients: leader $first killed; published through node ${survivors[0]} (new leader $second); nodes ${survivors[*]} answer the new version"
echo "cluster-clients: OK"
