"""Consistency checks of the deployment artifacts in deploy/ (run by tests/e2e/deploy_check.sh).

The schema tools check each file on its own; these check what only the combination says: that
the ports, paths, names and node ids in the unit, the Dockerfile, the compose file, the
Kubernetes manifests and the pkraft configs they carry agree with each other.

    checks.py systemd UNIT TOML SYSUSERS
    checks.py docker REPO DOCKERFILE
    checks.py compose COMPOSE_JSON OUTDIR   (copies the Prometheus service's config mounts to
                                         OUTDIR as the container sees them, for promtool)
    checks.py k8s RENDERED_YAML SECRET_EXAMPLE OUTDIR
        (writes OUTDIR/core.yaml, OUTDIR/servicemonitors.json, OUTDIR/pkraft-N.toml for each
        file in the ConfigMap)
Exit status 1 with one "FAIL:" line per problem.
"""

import json
import os
import re
import shutil
import sys
import tomllib

import yaml

problems = []


def fail(msg):
    problems.append(msg)


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def port_of(addr):
    """The port of a "host:port" / "[v6]:port" string."""
    return int(str(addr).rsplit(":", 1)[1])


def host_of(addr):
    return str(addr).rsplit(":", 1)[0].strip("[]")


def listens(cfg):
    """The listen addresses of a pkraft config, with pkraft's defaults for unset ones."""
    return {
        "http": cfg.get("http", {}).get("listen", "127.0.0.1:8080"),
        "dns": cfg.get("dns", {}).get("listen", "127.0.0.1:5300"),
        "peer": cfg.get("cluster", {}).get("peer_listen", "127.0.0.1:7400"),
        "admin": cfg.get("admin", {}).get("listen", "127.0.0.1:7401"),
    }


# ---------------------------------------------------------------------------------------------
# systemd


def parse_unit(path):
    """systemd unit: {section: {key: [values in order]}} (keys may repeat)."""
    sections, cur = {}, None
    for raw in open(path, encoding="utf-8"):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            cur = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        cur.setdefault(key.strip(), []).append(value.strip())
    return sections


def check_systemd(unit_path, toml_path, sysusers_path):
    unit = parse_unit(unit_path)
    svc = unit.get("Service", {})
    one = lambda key: (svc.get(key) or [None])[-1]  # noqa: E731
    cfg = tomllib.load(open(toml_path, "rb"))

    exec_start = one("ExecStart") or ""
    m = re.fullmatch(r"(\S+) serve --config (\S+)", exec_start)
    if check(m, f"ExecStart {exec_start!r} is not 'BIN serve --config FILE'"):
        binary, config = m.groups()
        check(binary == "/usr/local/bin/pkraft", f"ExecStart runs {binary}, docs say /usr/local/bin/pkraft")
        confdir = one("ConfigurationDirectory")
        check(config == f"/etc/{confdir}/pkraft.toml",
              f"ExecStart's config {config} is not in ConfigurationDirectory=/etc/{confdir}")
    state = one("StateDirectory")
    check(cfg.get("data_dir") == f"/var/lib/{state}",
          f"{toml_path}: data_dir {cfg.get('data_dir')!r} is not StateDirectory=/var/lib/{state}")
    check(one("WorkingDirectory") == f"/var/lib/{state}", "WorkingDirectory is not the state directory")
    for key in (("cluster", "secret_file"), ("admin", "token_file")):
        value = cfg.get(key[0], {}).get(key[1])
        check(value and value.startswith(f"/etc/{one('ConfigurationDirectory')}/"),
              f"{toml_path}: {'.'.join(key)} {value!r} is not under the ConfigurationDirectory")
    check("secret" not in cfg.get("cluster", {}) and "token" not in cfg.get("admin", {}),
          f"{toml_path}: inline secret in the example")
    check(one("Type") in ("exec", "simple"), "Type= must be exec or simple (pkraft has no sd_notify)")
    check(one("User") and one("User") != "root", "User= must be a dedicated user")
    check(one("DynamicUser") in (None, "no"), "DynamicUser= would change the data dir's owner")
    users = [l.split()[1] for l in open(sysusers_path) if l.strip() and not l.startswith("#")]
    check(one("User") in users, f"User={one('User')} is not created by {sysusers_path}")
    check(one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet= is not exactly CAP_NET_BIND_SERVICE")
    check(one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE", "AmbientCapabilities= is not exactly CAP_NET_BIND_SERVICE")
    low = [n for n, a in listens(cfg).items() if port_of(a) < 1024]
    check(not low or one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE",
          f"listeners {low} on ports < 1024 need CAP_NET_BIND_SERVICE")
    nofile = int(one("LimitNOFILE") or 0)
    maxconn = cfg.get("http", {}).get("max_connections", 4096)
    # public HTTP (+ HTTPS) connections, admin and peer (1024 each), files and DNS over TCP
    need = maxconn * (2 if "https" in cfg else 1) + 2 * 1024 + 1024
    check(nofile >= need, f"LimitNOFILE={nofile} is below {need} for http.max_connections={maxconn}")
    check(one("KillSignal") in (None, "SIGTERM"), "KillSignal= must be SIGTERM (pkraft's clean stop)")
    stop = one("TimeoutStopSec") or "90s"
    secs = int(re.fullmatch(r"(\d+)s?", stop).group(1)) if re.fullmatch(r"(\d+)s?", stop) else None
    check(secs is not None and secs >= 20, f"TimeoutStopSec={stop}: allow at least 20 s (10 s HTTP drain + fsync)")
    check(one("Restart") == "on-failure", "Restart= must be on-failure")
    families = set((one("RestrictAddressFamilies") or "").split())
    check({"AF_INET", "AF_INET6"} <= families, "RestrictAddressFamilies= must allow AF_INET and AF_INET6")
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges"):
        check(one(key) in ("strict", "yes", "true"), f"{key}= is not set")
    check("@system-service" in (svc.get("SystemCallFilter") or []), "SystemCallFilter=@system-service is not set")


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def check_docker(repo, dockerfile):
    from dockerfile_parse import DockerfileParser
    from docker.utils.build import PatternMatcher, exclude_paths

    parser = DockerfileParser(path=dockerfile)
    instrs = parser.structure
    froms = [i for i in instrs if i["instruction"] == "FROM"]
    check(len(froms) >= 2, "the Dockerfile is not multi-stage")
    # Split into stages.
    stages, cur = [], None
    for i in instrs:
        if i["instruction"] == "FROM":
            cur = {"from": i["value"], "instrs": []}
            stages.append(cur)
        elif cur is not None:
            cur["instrs"].append(i)
    final = stages[-1]
    base = final["from"].split()[0]
    check(":" in base.rsplit("/", 1)[-1] and not base.endswith(":latest"),
          f"final base image {base!r} has no pinned tag")
    users = [i["value"] for i in final["instrs"] if i["instruction"] == "USER"]
    if check(users, "final stage sets no USER"):
        uid = users[-1].split(":")[0]
        check(uid.isdigit() and int(uid) != 0, f"final USER {users[-1]!r} is not a numeric non-root uid")
        chowns = [re.search(r"--chown=(\S+)", i["value"]) for i in final["instrs"] if i["instruction"] == "COPY"]
        for c in filter(None, chowns):
            check(c.group(1) == users[-1], f"COPY --chown={c.group(1)} is not the USER {users[-1]}")
    for i in instrs:
        check(i["instruction"] != "ADD", f"line {i['startline'] + 1}: ADD (use COPY; never ADD a URL)")
    runs = " ".join(i["value"] for i in instrs if i["instruction"] == "RUN")
    check(re.search(r"cargo build --release --locked -p pkraft\b", runs), "no `cargo build --release --locked -p pkraft`")
    exposed = " ".join(i["value"] for i in final["instrs"] if i["instruction"] == "EXPOSE").split()
    for p in ("8080/tcp", "5353/udp", "5353/tcp", "7400/tcp", "7401/tcp"):
        check(p in exposed, f"EXPOSE lacks {p}")
    entry = [i["value"] for i in final["instrs"] if i["instruction"] == "ENTRYPOINT"]
    check(entry and entry[-1].startswith("["), "ENTRYPOINT must be exec form (no shell in the image)")

    # The build context after .dockerignore: what the build reads is in, the rest is out.
    patterns = [l.strip() for l in open(os.path.join(repo, ".dockerignore")) if l.strip() and not l.startswith("#")]
    context = exclude_paths(repo, patterns, dockerfile=os.path.relpath(dockerfile, repo))
    for i in instrs:
        if i["instruction"] == "COPY" and "--from=" not in i["value"]:
            for src in i["value"].split()[:-1]:
                if src.startswith("--"):
                    continue
                check(os.path.exists(os.path.join(repo, src)), f"COPY source {src} does not exist")
                check(any(p == src or p.startswith(src.rstrip("/") + "/") for p in context),
                      f"COPY source {src} is excluded by .dockerignore")
    needed = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "config/dev.toml", "tests/it/main.rs"]
    needed += [f"crates/{c}/Cargo.toml" for c in os.listdir(os.path.join(repo, "crates"))]
    for path in needed:
        check(path in context, f".dockerignore leaves {path} out of the build context")
    # Paths that must stay out, existing or not: out if the path or a directory above it is
    # excluded (Docker does not descend into an excluded directory without a "!" exception).
    matcher = PatternMatcher(patterns)
    for path in ("target/release/pkraft", "data/state.redb", "tests/fuzz/target/x", "deploy/docker/.env",
                 ".git/config", "crates/pkraft/target/x", "tests/fuzz/corpus/x"):
        parts = path.split("/")
        check(any(matcher.matches("/".join(parts[:n])) for n in range(1, len(parts) + 1)),
              f".dockerignore lets {path} into the build context")
    big = [p for p in context if os.path.getsize(os.path.join(repo, p)) > 5 << 20]
    check(not big, f"files over 5 MiB in the build context: {big}")


# ---------------------------------------------------------------------------------------------
# docker compose


def check_compose(compose_json, outdir):
    project = json.load(open(compose_json))
    services = project["services"]
    # Prometheus: its config and rule files as mounted, copied to OUTDIR/<path below /etc/prometheus>.
    prom_svc = services.get("prometheus", {})
    prometheus_yml = None
    for v in prom_svc.get("volumes", []):
        if v["type"] == "bind" and v["target"].startswith("/etc/prometheus/"):
            if not check(os.path.isfile(v["source"]), f"prometheus: mounted file {v['source']} does not exist"):
                continue
            dest = os.path.join(outdir, os.path.relpath(v["target"], "/etc/prometheus"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(v["source"], dest)
            if v["target"] == "/etc/prometheus/prometheus.yml":
                prometheus_yml = v["source"]
    check("--config.file=/etc/prometheus/prometheus.yml" in (prom_svc.get("command") or []),
          "prometheus: not started with --config.file=/etc/prometheus/prometheus.yml")
    if not check(prometheus_yml, "prometheus: no config mounted at /etc/prometheus/prometheus.yml"):
        return
    nodes = {name: s for name, s in services.items() if s.get("image", "").startswith("pkraft")}
    check(len(nodes) == 3, f"expected 3 pkraft services, found {sorted(nodes)}")
    configs, ids, bootstraps = {}, {}, []
    for name, svc in sorted(nodes.items()):
        mounts = {v["target"]: v for v in svc.get("volumes", [])}
        conf = mounts.get("/etc/pkraft/pkraft.toml")
        if not check(conf and conf["type"] == "bind" and conf.get("read_only"),
                     f"{name}: no read-only bind of its config at /etc/pkraft/pkraft.toml"):
            continue
        if not check(os.path.isfile(conf["source"]), f"{name}: config {conf['source']} does not exist"):
            continue
        cfg = tomllib.load(open(conf["source"], "rb"))
        configs[name] = cfg
        ids.setdefault(cfg.get("node_id"), []).append(name)
        data = mounts.get(cfg.get("data_dir"))
        check(data and data["type"] == "volume", f"{name}: data_dir {cfg.get('data_dir')} is not a named volume")
        cl = cfg.get("cluster", {})
        check(cl.get("advertise") == f"{name}:{port_of(cl.get('peer_listen', ':7400'))}",
              f"{name}: cluster.advertise {cl.get('advertise')!r} is not {name}:<peer port>")
        if cl.get("bootstrap"):
            bootstraps.append(name)
        for addr in cl.get("join", []):
            check(host_of(addr) in nodes and host_of(addr) != name, f"{name}: joins {addr}, not another node")
        l = listens(cfg)
        targets = {(int(p["target"]), p.get("protocol", "tcp")) for p in svc.get("ports", [])}
        check((port_of(l["http"]), "tcp") in targets, f"{name}: HTTP port {port_of(l['http'])} is not published")
        for proto in ("udp", "tcp"):
            check((port_of(l["dns"]), proto) in targets, f"{name}: DNS port {port_of(l['dns'])}/{proto} is not published")
        for key in ("http", "dns", "peer", "admin"):
            check(host_of(l[key]) in ("0.0.0.0", "::"), f"{name}: {key} listens on {l[key]}, unreachable from outside the container")
        for key in ("secret", "secret_file"):
            check(key not in cl, f"{name}: cluster.{key} set; compose passes PKRAFT_CLUSTER_SECRET")
        env = svc.get("environment", {})
        check("PKRAFT_CLUSTER_SECRET" in env and "PKRAFT_ADMIN_TOKEN" in env, f"{name}: secrets not in the environment")
        check(svc.get("read_only") is True, f"{name}: root file system not read-only")
        check(svc.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped")
        hc = " ".join(svc.get("healthcheck", {}).get("test", []))
        m = re.search(r"--admin (\S+)", hc)
        check(not hc or (m and port_of(m.group(1)) == port_of(l["admin"])),
              f"{name}: healthcheck does not ask the admin port {port_of(l['admin'])}")
    for node_id, names in ids.items():
        check(len(names) == 1 and isinstance(node_id, int) and node_id >= 1, f"node_id {node_id} used by {names}")
    check(len(bootstraps) == 1, f"exactly one node must bootstrap, found {bootstraps}")
    prom = yaml.safe_load(open(prometheus_yml))
    targets = {t for job in prom["scrape_configs"] if job["job_name"] == "pkraft"
               for sc in job["static_configs"] for t in sc["targets"]}
    want = {f"{n}:{port_of(listens(c)['admin'])}" for n, c in configs.items()}
    check(targets == want, f"{prometheus_yml}: pkraft targets {sorted(targets)} are not {sorted(want)}")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def check_k8s(rendered, secret_example, outdir):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    core = [d for d in docs if d["kind"] != "ServiceMonitor"]
    with open(os.path.join(outdir, "core.yaml"), "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    json.dump(by_kind.get("ServiceMonitor", []), open(os.path.join(outdir, "servicemonitors.json"), "w"))
    for kind in ("StatefulSet", "ConfigMap", "Service", "PodDisruptionBudget", "ServiceMonitor"):
        check(kind in by_kind, f"no {kind} in the kustomization")
    if problems:
        return
    sts = by_kind["StatefulSet"][0]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    name = sts["metadata"]["name"]
    check(spec.get("podManagementPolicy") == "Parallel", "podManagementPolicy must be Parallel (see statefulset.yaml)")
    c = pod["containers"][0]
    args = c.get("args", [])
    check("/etc/pkraft/$(POD_NAME).toml" in args, "the container does not read /etc/pkraft/$(POD_NAME).toml")
    envs = {e["name"]: e for e in c.get("env", [])}
    check(envs.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "POD_NAME is not the pod name")
    ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False,
          "securityContext: runAsNonRoot, readOnlyRootFilesystem, allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add"),
          "capabilities: drop ALL and add none")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz",
          "probes: readiness /readyz, liveness /healthz")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    cm_name = vols["config"]["configMap"]["name"]
    secret_name = vols["secrets"]["secret"]["secretName"]
    check(mounts.get("config") == "/etc/pkraft", "the ConfigMap is not mounted at /etc/pkraft")
    check("data" in [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])], "no data volumeClaimTemplate")
    cms = {cm["metadata"]["name"]: cm for cm in by_kind["ConfigMap"]}
    if not check(cm_name in cms, f"ConfigMap {cm_name} is not in the kustomization"):
        return
    files = cms[cm_name]["data"]
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    headless = services.get(spec["serviceName"])
    if check(headless, f"serviceName {spec['serviceName']} has no Service"):
        check(headless["spec"].get("clusterIP") == "None", "the peer Service is not headless")
        check(headless["spec"].get("publishNotReadyAddresses") is True, "the peer Service must publish not-ready pods")
    replicas = spec["replicas"]
    check(replicas in (3, 5), f"replicas {replicas}: use 3 or 5 voters")
    ordinals = sorted(int(m.group(1)) for k in files if (m := re.fullmatch(rf"{name}-(\d+)\.toml", k)))
    check(ordinals == list(range(len(ordinals))) and len(ordinals) >= replicas,
          f"ConfigMap files for ordinals {ordinals}, need 0..{replicas - 1} without gaps")
    common, ids = None, {}
    for o in ordinals:
        text = files[f"{name}-{o}.toml"]
        open(os.path.join(outdir, f"{name}-{o}.toml"), "w").write(text)
        cfg = tomllib.loads(text)
        cl = cfg.get("cluster", {})
        # ordinal + 1 at first; a re-created ordinal gets a new id (ids are never reused).
        check(isinstance(cfg.get("node_id"), int) and cfg["node_id"] >= 1, f"{name}-{o}.toml: node_id must be >= 1")
        ids.setdefault(cfg.get("node_id"), []).append(o)
        advert = f"{name}-{o}.{spec['serviceName']}:{port_of(cl.get('peer_listen', ':7400'))}"
        check(cl.get("advertise") == advert, f"{name}-{o}.toml: advertise {cl.get('advertise')!r}, expected {advert!r}")
        check(not cl.get("bootstrap"), f"{name}-{o}.toml: bootstrap (use `pkraft cluster init` on {name}-0)")
        joins = cl.get("join", [])
        # pkraft-0 is initialized with `pkraft cluster init`; every other pod joins.
        check(o == 0 or joins, f"{name}-{o}.toml: no join list")
        for addr in joins:
            m = re.fullmatch(rf"{name}-(\d+)\.{spec['serviceName']}:(\d+)", addr)
            check(m and int(m.group(1)) != o and int(m.group(1)) in ordinals,
                  f"{name}-{o}.toml: joins {addr}, not another pod of the StatefulSet")
        for key, path in (("cluster", "secret_file"), ("admin", "token_file")):
            value = cfg.get(key, {}).get(path, "")
            check(os.path.dirname(value) == mounts.get("secrets"), f"{name}-{o}.toml: {key}.{path} not in the Secret mount")
        check(cfg.get("data_dir") == mounts.get("data"), f"{name}-{o}.toml: data_dir is not the volume mount")
        l = listens(cfg)
        for key, port_name in (("http", "http"), ("dns", "dns-udp"), ("dns", "dns-tcp"), ("peer", "peer"), ("admin", "admin")):
            check(ports.get(port_name, (None,))[0] == port_of(l[key]),
                  f"{name}-{o}.toml: {key} port {port_of(l[key])} is not container port {port_name} {ports.get(port_name)}")
            check(host_of(l[key]) in ("0.0.0.0", "::"), f"{name}-{o}.toml: {key} listens on {l[key]}, unreachable from outside the pod")
        check(port_of(l["dns"]) >= 1024, f"{name}-{o}.toml: DNS port < 1024 needs NET_BIND_SERVICE; listen on 5353")
        rest = json.loads(json.dumps(cfg))
        del rest["node_id"]
        rest["cluster"].pop("advertise", None)
        rest["cluster"].pop("join", None)
        if common is None:
            common = rest
        check(rest == common, f"{name}-{o}.toml differs from {name}-0.toml beyond node_id, advertise and join")
    for node_id, ords in ids.items():
        check(len(ords) == 1, f"node_id {node_id} is in the files of ordinals {ords}")
    for svc in services.values():
        sel = svc["spec"].get("selector", {})
        check(all(sts["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items()),
              f"Service {svc['metadata']['name']} does not select the pods")
        for p in svc["spec"]["ports"]:
            tp = p["targetPort"]
            check(tp in ports and ports[tp][1] == p.get("protocol", "TCP"),
                  f"Service {svc['metadata']['name']}: targetPort {tp}/{p.get('protocol', 'TCP')} is not a container port")
    dns = services.get("pkraft-dns")
    if check(dns, "no Service pkraft-dns"):
        protos = {(p["port"], p.get("protocol", "TCP")) for p in dns["spec"]["ports"]}
        check(protos == {(53, "UDP"), (53, "TCP")}, f"pkraft-dns serves {protos}, not 53/UDP and 53/TCP")
    pdb = by_kind["PodDisruptionBudget"][0]["spec"]
    check(pdb.get("maxUnavailable") == 1, "PodDisruptionBudget maxUnavailable must be 1")
    check(pdb["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items(),
          "the PodDisruptionBudget does not select the pods")
    sm = by_kind["ServiceMonitor"][0]["spec"]
    sel = sm["selector"]["matchLabels"]
    target = [s for s in services.values() if sel.items() <= s["metadata"].get("labels", {}).items()]
    check(len(target) == 1 and target[0] is headless, "the ServiceMonitor must select the headless peer Service only")
    if target:
        check(all(e["port"] in [p["name"] for p in target[0]["spec"]["ports"]] and e.get("path") == "/metrics"
                  for e in sm["endpoints"]), "the ServiceMonitor does not scrape /metrics on a port of that Service")
        check(target[0]["metadata"]["labels"].get(sm.get("jobLabel")) == "pkraft",
              "the ServiceMonitor's jobLabel must give job=\"pkraft\" (the alert rules select it)")
    secret = yaml.safe_load(open(secret_example))
    check(secret["metadata"]["name"] == secret_name, f"{secret_example} is not the Secret {secret_name} the pods mount")
    for o in ordinals:
        cfg = tomllib.loads(files[f"{name}-{o}.toml"])
        for key, path in (("cluster", "secret_file"), ("admin", "token_file")):
            base = os.path.basename(cfg.get(key, {}).get(path, ""))
            check(base in secret.get("stringData", {}), f"{name}-{o}.toml: {key}.{path} names key {base!r}, not in {secret_example}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"systemd": check_systemd, "docker": check_docker, "compose": check_compose, "k8s": check_k8s}[cmd](*args)
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        sys.exit(1)
    print(f"{cmd}: consistency checks passed")


if __name__ == "__main__":
    main()
