#!/usr/bin/env bash
# End-to-end check of the metrics with a real Prometheus (Debian's `prometheus` package): a
# 3-node cluster on loopback, two packets published, then Prometheus scrapes every node's admin
# listener with deploy/alerts.yml loaded, and its HTTP API must show all three targets up,
# exactly one leader, the two records on every node, and the alert rules loaded. Also checks
# the shipped deploy files: `promtool check` of deploy/prometheus.yml, `promtool test rules` of
# deploy/alerts.test.yml, and that every pkraft metric the alerts and the Grafana dashboard use
# is one a node exports.
#
# Usage: [SIGN_PACKET=path/to/sign-packet] tests/e2e/prometheus.sh [PKRAFT_BIN]
# Needs: prometheus, promtool, curl, python3; .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/lib/pkraft.sh
source tests/lib/pkraft.sh
bin=${1:-target/debug/pkraft}
work=$(mktemp -d)
pids=()
cleanup() {
  kill_all "${pids[@]}"
  cluster_down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "prometheus: FAIL: $*" >&2
  print_log_tails "$work"
  exit 1
}
for tool in prometheus promtool curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (Debian package prometheus, curl, python3)"
done

# --- the shipped deploy files ---------------------------------------------------------------
promtool check config deploy/prometheus.yml >/dev/null || fail "promtool check config deploy/prometheus.yml"
promtool test rules deploy/alerts.test.yml >/dev/null || fail "promtool test rules deploy/alerts.test.yml"

# --- a 3-node cluster -----------------------------------------------------------------------
# With the DHT bridge on, so that its metrics (used by the alerts and the dashboard) exist. Its
# only bootstrap node is a loopback port nothing listens on: no DHT traffic leaves the machine.
PKRAFT_EXTRA_TOML='[dht]
enabled = true
listen = "127.0.0.1:0"
bootstrap = ["127.0.0.1:9"]'
secret=prometheus-e2e-cluster-secret-0123456789
declare -A node_pid node_http node_dns node_admin node_https
# With [https] (the test certificate), so that the certificate metrics exist too.
tls=tests/fixtures/tls
RUST_LOG=info cluster_up "$(dirname "$bin")" "$work/cluster" 3 "$secret" \
  --https-cert "$tls/localhost.crt" --https-key "$tls/localhost.key" || fail "the cluster did not start"
pids+=("${node_pid[@]}")

sign_packet() {
  if [ -n "${SIGN_PACKET:-}" ]; then "$SIGN_PACKET" "$@"
  else cargo run -q --locked -p pkraft-testkit --example sign-packet -- "$@"; fi
}
for seed in 1 2; do
  key=$(sign_packet "$work/p$seed.bin" "$seed" "192.0.2.$seed:4433") || fail "signing a packet failed"
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary "@$work/p$seed.bin" \
    "${node_http[2]}/$key")
  [ "$code" = 204 ] || fail "PUT through node 2 answered $code"
done

# --- every metric the deploy files use exists -------------------------------------------------
# All three nodes together: some series exist only where something happened (a labelled
# counter appears with its first request; replication lag only on the leader).
for n in 1 2 3; do
  curl -sf "http://${node_admin[$n]}/metrics" >>"$work/scrape.txt" || fail "scrape of node $n"
done
python3 - "$work/scrape.txt" deploy/alerts.yml deploy/grafana-dashboard.json <<'PY' || fail "deploy files name metrics pkraft does not export"
import json, re, sys
exported = {line.split("{")[0].split(" ")[0] for line in open(sys.argv[1]) if not line.startswith("#")}
families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported} | exported
used = set(re.findall(r"\b((?:pkraft|process)_[a-z_]+)", open(sys.argv[2]).read()))
dashboard = json.load(open(sys.argv[3]))
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        used |= set(re.findall(r"\b((?:pkraft|process)_[a-z_]+)", target["expr"]))
# Exported only with a section this cluster does not set; another test scrapes each.
only_with = {"pkraft_tls_acme_orders_total": "[https.acme]: tests/it/acme.rs"}
missing = sorted(m for m in used if m not in families and m not in only_with)
if missing:
    sys.exit(f"not exported: {missing}")
print(f"prometheus: {len(used)} metric names in the alerts and the dashboard, all exported")
PY

# --- a real Prometheus scraping the three nodes -----------------------------------------------
prom_port=$(loopback_port)
cp deploy/alerts.yml "$work/alerts.yml"
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: pkraft
    static_configs:
      - targets: ["${node_admin[1]}", "${node_admin[2]}", "${node_admin[3]}"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
api="http://127.0.0.1:$prom_port/api/v1"
query() {  # prints the values of an instant query, one per line
  curl -sf --get "$api/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    print(r["value"][1])'
}
ok=
for _ in $(seq 1 600); do
  up=$(curl -sf "$api/targets" 2>/dev/null | python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
print(sum(1 for x in t if x["health"] == "up"))' 2>/dev/null || echo 0)
  leaders=$(query 'sum(pkraft_raft_is_leader)' 2>/dev/null || true)
  records=$(query 'pkraft_store_records' 2>/dev/null | sort -u | tr '\n' ' ' || true)
  if [ "$up" = 3 ] && [ "$leaders" = 1 ] && [ "$records" = "2 " ]; then ok=yes; break; fi
  sleep 0.1
done
[ -n "$ok" ] || fail "Prometheus saw $up targets up, sum(is_leader) = '$leaders', records '$records' (want 3, 1, '2 ')"
count=$(query 'count(pkraft_store_records)')
[ "$count" = 3 ] || fail "pkraft_store_records from $count nodes, not 3"
rules=$(curl -sf "$api/rules" | python3 -c '
import json, sys
print(" ".join(sorted(r["name"] for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"])))')
case "$rules" in
  *PkraftNoLeader*PkraftNodeDown*PkraftReplicationLag*PkraftStaleDnsAnswers*) ;;
  *) fail "alert rules not loaded: $rules" ;;
esac
# The rules must have been evaluated at least once before "none fires" means anything.
evaluated=
for _ in $(seq 1 300); do
  evaluated=$(curl -sf "$api/rules" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
print("yes" if groups and all(not g["lastEvaluation"].startswith("0001") for g in groups) else "")' || true)
  [ -n "$evaluated" ] && break
  sleep 0.1
done
[ -n "$evaluated" ] || fail "the alert rules were not evaluated within 30 s"
# Pending is not firing: right after start Prometheus may have scraped only some nodes (say, only
# followers), which is what the rules' `for` durations are there to ride out.
firing=$(curl -sf "$api/alerts" | python3 -c '
import json, sys
print(" ".join(a["labels"]["alertname"] for a in json.load(sys.stdin)["data"]["alerts"]
               if a["state"] == "firing"))')
[ -z "$firing" ] || fail "alerts on a healthy cluster: $firing"
echo "prometheus: OK (3 targets up, one leader, 2 records on each node, $(echo "$rules" | wc -w) alert rules loaded, none firing)"
