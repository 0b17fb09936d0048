#!/usr/bin/env bash
# End-to-end check with standard tools, the README's quick check made strict:
# start the real binary (`pkraft dev`) on free loopback ports, publish a signed packet with curl,
# read it back with curl (HTTP and DoH JSON), dig (UDP and TCP) and kdig, then SIGKILL, restart and
# read again.
#
# Usage: [SIGN_PACKET=path/to/sign-packet] tests/e2e/quickcheck.sh [PKRAFT_BIN]
#   PKRAFT_BIN defaults to target/debug/pkraft; without SIGN_PACKET the example is run with cargo.
# Needs: curl, dig (bind9-dnsutils), kdig (knot-dnsutils); .ci/run installs them.
set -euo pipefail

bin=${1:-target/debug/pkraft}
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "quickcheck: FAIL: $*" >&2; [ -f "$work/log" ] && tail -n 30 "$work/log" >&2; exit 1; }

# Starts pkraft on port 0 and reads the bound addresses from its "pkraft listening" log line.
start() {
  # Emptied here, not only by the background child's redirection: after a restart the loop below
  # could otherwise read the killed process's listening line (its old ports) before the child ran.
  : >"$work/log"
  "$bin" dev --data-dir "$work/data" --http-listen 127.0.0.1:0 --dns-listen 127.0.0.1:0 \
    --peer-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$work/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do  # up to 30 s
    line=$(grep -m1 "pkraft listening" "$work/log" || true)
    [ -n "$line" ] && break
    kill -0 "$pid" 2>/dev/null || fail "pkraft exited during start"
    sleep 0.1
  done
  [ -n "$line" ] || fail "pkraft did not start"
  http=$(sed -E 's/.* http=([^ ]+).*/\1/' <<<"$line")
  dns=$(sed -E 's/.* dns=([^ ]+).*/\1/' <<<"$line")
  dns_port=${dns##*:}
}

start
sign_packet() {
  if [ -n "${SIGN_PACKET:-}" ]; then "$SIGN_PACKET" "$@"
  else cargo run -q --locked -p pkraft-testkit --example sign-packet -- "$@"; fi
}
key=$(sign_packet "$work/p.bin" 7 192.0.2.7:4433) || fail "signing a packet failed"
name="_iroh.$key.pkarr.test"

status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @"$work/p.bin" "http://$http/pkarr/$key")
[ "$status" = 204 ] || fail "PUT answered $status"

curl -sf "http://$http/pkarr/$key" -o "$work/got.bin" || fail "GET failed"
cmp -s "$work/p.bin" "$work/got.bin" || fail "GET returned other bytes than were PUT"

check_dns() {  # $1 = label for messages, rest = command printing the TXT data
  local label=$1; shift
  out=$("$@") || fail "$label failed"
  [ "$out" = '"addr=192.0.2.7:4433"' ] || fail "$label answered: $out"
}
check_dns "dig udp" dig @127.0.0.1 -p "$dns_port" "$name" TXT +short
check_dns "dig tcp" dig @127.0.0.1 -p "$dns_port" "$name" TXT +short +tcp
check_dns "kdig" kdig @127.0.0.1 -p "$dns_port" "$name" TXT +short
doh=$(curl -sf "http://$http/dns-query?name=$name&type=TXT") || fail "DoH (JSON) failed"
case "$doh" in *'addr=192.0.2.7:4433'*) ;; *) fail "DoH (JSON) answered: $doh" ;; esac

rcode=$(dig @127.0.0.1 -p "$dns_port" "_iroh.yg4gxe7z1r7mr6orids9fh95y7gxhdsxjqi6nngsxxtakqaxr5no.pkarr.test" TXT | grep -o 'status: [A-Z]*')
[ "$rcode" = "status: NXDOMAIN" ] || fail "unknown key: $rcode"
rcode=$(dig @127.0.0.1 -p "$dns_port" example.com A | grep -o 'status: [A-Z]*')
[ "$rcode" = "status: REFUSED" ] || fail "outside the origin: $rcode"

# Crash right after the acknowledged PUT, restart, and read again.
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
start
check_dns "dig after SIGKILL+restart" dig @127.0.0.1 -p "$dns_port" "$name" TXT +short
curl -sf "http://$http/pkarr/$key" -o "$work/got2.bin" || fail "GET after restart failed"
cmp -s "$work/p.bin" "$work/got2.bin" || fail "GET after restart returned other bytes"

kill -TERM "$pid"; wait "$pid" || fail "pkraft exited non-zero on SIGTERM"; pid=
echo "quickcheck: ok (http $http, dns $dns, key $key)"
