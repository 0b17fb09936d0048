#!/usr/bin/env bash
# Starts or stops the local 3-node demo cluster (config/node{1,2,3}.toml) on loopback.
#   deploy/local-cluster.sh start BIN   start the nodes, initialize node 1, wait for 3 voters
#   deploy/local-cluster.sh stop        SIGTERM the nodes and wait for them to exit
# Logs and pids go to ./data/cluster/.
set -euo pipefail

DIR=./data/cluster
ADMIN_TOKEN=local-demo-admin-token-not-for-production
WAIT_SECS=60
# Reads `pkraft cluster status --json` and prints how many voters have applied a settled (not
# joint) membership: the cluster is ready when that is 3.
SETTLED_VOTERS='
import json, sys
s = json.load(sys.stdin)
m = s["membership"]
settled = [x for x in s["members"]
           if x["voter"] and x["status"] and m["log_index"] is not None
           and (x["status"]["applied_index"] or 0) >= m["log_index"]]
print(0 if m["joint"] else len(settled))
'

stop() {
    for n in 1 2 3; do
        pidfile="$DIR/node$n.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -TERM "$pid" 2>/dev/null; then
            for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "node $n did not stop within 20s of SIGTERM; sending SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$pidfile"
    done
    echo "cluster stopped (data kept in $DIR; rm -rf $DIR to start afresh)"
}

start() {
    local bin=$1
    # Before any node starts: without python3 the readiness check below could never pass.
    command -v python3 >/dev/null ||
        { echo "make cluster needs python3 (Debian/Ubuntu: apt install python3)" >&2; exit 1; }
    mkdir -p "$DIR"
    for n in 1 2 3; do
        if [ -f "$DIR/node$n.pid" ] && kill -0 "$(cat "$DIR/node$n.pid")" 2>/dev/null; then
            echo "node $n is already running (make cluster-stop first)" >&2
            exit 1
        fi
        "$bin" serve --config "config/node$n.toml" >"$DIR/node$n.log" 2>&1 &
        echo $! >"$DIR/node$n.pid"
    done
    # Node 1 starts a new cluster the first time; nodes 2 and 3 ask node 1 to admit them until it
    # does. On later starts the data dirs already hold the cluster and init answers 409.
    for _ in $(seq 1 $((WAIT_SECS * 10))); do
        if out=$(PKRAFT_ADMIN_TOKEN=$ADMIN_TOKEN "$bin" cluster --admin 127.0.0.1:7421 init 2>&1); then
            break
        fi
        case "$out" in *"already part of a cluster"*) break ;; esac
        sleep 0.1
    done
    for _ in $(seq 1 $((WAIT_SECS * 10))); do
        voters=$("$bin" cluster --admin 127.0.0.1:7421 status --json 2>/dev/null |
            python3 -c "$SETTLED_VOTERS" 2>/dev/null || echo 0)
        [ "$voters" = 3 ] && break
        sleep 0.1
    done
    if [ "$voters" != 3 ]; then
        echo "the cluster did not form within ${WAIT_SECS}s; see $DIR/node*.log" >&2
        stop >&2
        exit 1
    fi
    "$bin" cluster --admin 127.0.0.1:7421 status
    cat <<USAGE

3-node cluster running (logs: $DIR/node{1,2,3}.log). Any node takes writes and serves reads:
  HTTP relay  http://127.0.0.1:8081/pkarr  :8082  :8083
  DNS         127.0.0.1:5301  :5302  :5303   (dig @127.0.0.1 -p 5302 _iroh.<z32>.pkarr.test TXT)
  status      $bin cluster --admin 127.0.0.1:7421 status
  stop        make cluster-stop
USAGE
}

case "${1:-}" in
    start) start "${2:?usage: $0 start BIN}" ;;
    stop) stop ;;
    *) echo "usage: $0 start BIN | stop" >&2; exit 2 ;;
esac
