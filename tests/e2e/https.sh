#!/usr/bin/env bash
# End-to-end check of the `[https]` listener with standard clients: publish a signed packet with
# curl over https, read it back with curl, and resolve it with kdig's DNS-over-HTTPS client
# (HTTP/2, POST and GET), trusting only the test CA in tests/fixtures/tls.
#
# Usage: [SIGN_PACKET=path/to/sign-packet] tests/e2e/https.sh [PKRAFT_BIN]
# Needs: curl, kdig (knot-dnsutils); .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
bin=${1:-target/debug/pkraft}
tls=$PWD/tests/fixtures/tls
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "https: FAIL: $*" >&2; [ -f "$work/log" ] && tail -n 30 "$work/log" >&2; exit 1; }

https_port=$(loopback_port)
single_node_config "$work/node.toml" "$work/data" 127.0.0.1:0 127.0.0.1:0 "" "[https]
listen = \"127.0.0.1:$https_port\"
cert = \"$tls/localhost.crt\"
key = \"$tls/localhost.key\""
"$bin" serve --config "$work/node.toml" >"$work/log" 2>&1 &
pid=$!
base="https://localhost:$https_port"
up=
for _ in $(seq 1 300); do
  curl -sf --cacert "$tls/ca.crt" --resolve "localhost:$https_port:127.0.0.1" "$base/healthz" >/dev/null && { up=yes; break; }
  kill -0 "$pid" 2>/dev/null || fail "pkraft exited during start"
  sleep 0.1
done
[ -n "$up" ] || fail "pkraft did not answer over https within 30 s"

sign_packet() {
  if [ -n "${SIGN_PACKET:-}" ]; then "$SIGN_PACKET" "$@"
  else cargo run -q --locked -p pkraft-testkit --example sign-packet -- "$@"; fi
}
key=$(sign_packet "$work/p.bin" 8 192.0.2.8:4433) || fail "signing a packet failed"
curl_https() { curl -s --cacert "$tls/ca.crt" --resolve "localhost:$https_port:127.0.0.1" "$@"; }

status=$(curl_https -o /dev/null -w '%{http_code}' -X PUT --data-binary @"$work/p.bin" "$base/pkarr/$key")
[ "$status" = 204 ] || fail "PUT over https answered $status"
curl_https -f "$base/pkarr/$key" -o "$work/got.bin" || fail "GET over https failed"
cmp -s "$work/p.bin" "$work/got.bin" || fail "GET over https returned other bytes than were PUT"

name="_iroh.$key.pkarr.test"
for mode in +https +https-get; do
  out=$(kdig @127.0.0.1 -p "$https_port" "$mode" +tls-ca="$tls/ca.crt" +tls-hostname=localhost \
    "$name" TXT +short) || fail "kdig $mode failed"
  [ "$out" = '"addr=192.0.2.8:4433"' ] || fail "kdig $mode answered: $out"
done
echo "https: OK (curl PUT/GET, kdig DoH POST and GET over HTTP/2)"
