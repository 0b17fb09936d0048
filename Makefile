# pkraft. `make run` starts a single-node dev server; `make test` runs every test.
# Everything builds with --locked against the committed Cargo.lock.

CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# Test builds unify features differently from plain builds (dev-dependencies), so the e2e check
# uses the binaries that `cargo test` builds instead of building a second variant.
PKRAFT_TEST_BIN := $(TARGET_DIR)/debug/pkraft
SIGN_PACKET_BIN := $(TARGET_DIR)/debug/examples/sign-packet

.PHONY: run cluster cluster-stop test fmt fmt-check lint e2e deploy-check bench bench-cold bench-dht bench-ab bench-ab-dns bench-handover bench-stalls bench-cold-reads bench-linearizable bench-latency bench-partitions bench-memory bench-repair bench-import bench-scale bench-install bench-abuse bench-smoke fuzz-smoke chaos chaos-smoke chaos-power-smoke sim sim-long sim-ci sim-planted ci release upgrade-test upgrade-smoke bench-put-budget bench-guard clean-data

## Start one node with the built-in dev config: data in ./data, HTTP 127.0.0.1:8080,
## DNS 127.0.0.1:5300 (UDP+TCP), origin pkarr.test. A release build (target/release/pkraft), so
## a first try runs at the speed a deployment does; `make test` builds the debug variant.
run:
	$(CARGO) run --release --locked -p pkraft -- dev

## Start a local 3-node cluster (config/node{1,2,3}.toml: HTTP :8081-8083, DNS :5301-5303),
## initialized and ready, from the release build; prints how to use it. `make cluster-stop`
## stops it.
cluster:
	$(CARGO) build --release --locked -p pkraft
	deploy/local-cluster.sh start $(TARGET_DIR)/release/pkraft

cluster-stop:
	deploy/local-cluster.sh stop

## Unit, storage-conformance and integration tests (real binary on loopback port 0).
test:
	$(CARGO) test --workspace --locked

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## curl + dig + kdig against the real binary (including SIGKILL and restart), the NSD diff, https,
## dig/kdig/pkraft resolve against a 3-node cluster before and after its leader is killed, and a
## real Prometheus scraping a 3-node cluster with the shipped alert rules.
e2e:
	$(CARGO) test --workspace --locked --no-run
	SIGN_PACKET=$(SIGN_PACKET_BIN) tests/e2e/quickcheck.sh $(PKRAFT_TEST_BIN)
	tests/e2e/nsd_diff.sh $(TARGET_DIR)/debug
	SIGN_PACKET=$(SIGN_PACKET_BIN) tests/e2e/https.sh $(PKRAFT_TEST_BIN)
	tests/e2e/cluster_clients.sh $(PKRAFT_TEST_BIN)
	SIGN_PACKET=$(SIGN_PACKET_BIN) tests/e2e/prometheus.sh $(PKRAFT_TEST_BIN)

## The deployment files in deploy/ (docs/DEPLOY.md): systemd-analyze, hadolint, docker-compose
## config, the compose-spec schema, kubectl kustomize, kubernetes-validate, the prometheus-operator
## schema, pkraft check-config on every config, and a node run under the unit's syscall filter.
## Installs its pinned Python and npm tools once into ~/.cache/pkraft-deploy-check; the sandbox
## step needs root (or password-less sudo).
deploy-check:
	$(CARGO) test --workspace --locked --no-run
	tests/e2e/deploy_check.sh $(PKRAFT_TEST_BIN)

## Side-by-side benchmark against iroh-dns-server, NSD and Knot DNS (release build; installs
## iroh-dns-server once into ~/.cache/pkraft-bench; NSD and Knot from Debian's nsd and knot
## packages; about 15 minutes), then bench-cold, bench-dht and bench-partitions. Updates
## docs/BENCHMARKS.md (run.sh's part; the others print their tables).
bench:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN_DIR=$(TARGET_DIR)/release tests/bench/run.sh full
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/cold.sh
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/dht.sh
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/partitions.sh

## DNS names never asked before (no cached answer or record can help), 200,000 and 1,000,000
## keys stored (BENCH_COLD_KEYS), against NSD (server-count = cores), Knot DNS (udp-workers =
## cores) and iroh-dns-server: q/s and server CPU per query (about 15 minutes; needs `make
## bench`'s iroh-dns-server unless BENCH_COLD_IROH=0).
bench-cold:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/cold.sh

## The Mainline DHT bridge against iroh-dns-server's [mainline] fallback on one local DHT
## testnet: answer times for keys only the DHT has, for keys nobody published and with the DHT
## down, then the republish rate at 1M stored keys (BENCH_DHT_REPUBLISH_KEYS; about 10 minutes;
## needs `make bench`'s iroh-dns-server).
bench-dht:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/dht.sh

## A 3-node cluster whose peer links add 40 ± 10 ms each way (LATENCY_DELAY_MS, LATENCY_JITTER_MS):
## PUT p50/p99, leader changes under load, failover; LATENCY_RAFT_TOML sets a [raft] section
## (about 2 minutes).
bench-latency:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	tests/bench/latency.sh $(TARGET_DIR)/release

## The write path of two builds side by side (BENCH_A, BENCH_B: dirs with a release `pkraft` and
## `pkraft-bench` each, e.g. copies of target/release from two commits): single node and 3-node
## cluster PUT/s, p50/p99, CPU per PUT against iroh-dns-server (installed by `make bench`), about
## 7 minutes (3 rounds; each run waits for the servers to go idle before and after).
bench-ab:
	tests/bench/ab.sh

## The write path's guard: this tree's release build against a base commit's (BENCH_BASE, default
## HEAD when the crates differ from it, else HEAD~1; built from git archive into
## target/bench-base/<commit>/, about 5 minutes the first time), through bench-ab. Its last line,
## B/A of PUT/s and CPU per PUT, goes into the message of every commit that touches the PUT path
## (docs/BENCHMARKS.md, "The write path's history"); about 7 minutes once the base is built.
bench-guard:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_B=$(TARGET_DIR)/release tests/bench/guard.sh

## The UDP answer path of two builds side by side with response rate limiting on, its limits
## far above the load (BENCH_A, BENCH_B as for bench-ab): dnsperf q/s per round and the
## medians' ratio, about 2 minutes a round pair (BENCH_RUNS, default 3).
bench-ab-dns:
	tests/bench/dns_ab.sh

## Leader handover on SIGTERM in a 5-node (BENCH_NODES=3|5) release cluster under writes: the
## longest run without a 204 per leader stop (BENCH_ROUNDS, default 5).
bench-handover:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/handover.sh

## Leader changes of a 3-node release cluster under steady PUTs while CPU hogs and a disk writer
## that fdatasyncs 8 MiB at a time run (phases of BENCH_PHASE_SECONDS, default 20): the target
## is 0 in every phase.
bench-stalls:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/stalls.sh

## Raft beside reads that wait on the disk: a 3-node release cluster with 1M packets
## (BENCH_COLD_READS_KEYS) under GET and DNS-over-TCP load on every node and a steady PUT stream,
## warm and then in a memory cgroup far below state.redb: leader changes and PUT p99 per phase;
## BENCH_BASE_BIN runs another build alongside. Needs root. About 6 minutes per build.
bench-cold-reads:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/cold_reads.sh

## Linearizable GETs at once through the followers of a 3-node release cluster against local
## GETs at the same load (512 connections, 6,000 GETs; 3 interleaved rounds): p50/p99, read-index
## rounds and the reads they carried, leader changes. About 2 minutes.
bench-linearizable:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	tests/bench/linearizable.sh $(TARGET_DIR)/release

## One node at 20k, 1M, 3M and 10M stored packets (BENCH_SCALE_POINTS): DNS, GET and PUT rates,
## restart after SIGKILL, a learner's catch-up by snapshot, backup, memory and disk per record;
## writes target/bench-scale.svg (BENCH_SCALE_SVG=docs/bench-scale.svg for the plot docs/BENCHMARKS.md
## shows: a full run only). Opt-in, not in CI: about 45 minutes and 15 GB of disk.
bench-scale:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/scale.sh

## `pkraft import` at scale: 1M packets (BENCH_IMPORT_KEYS) in a store written by the real
## iroh-dns-server 1.4.1 (installed as `make bench` installs it), imported into a fresh 3-node
## release cluster, 3 rounds (BENCH_IMPORT_ROUNDS), and again. Opt-in, not in CI: about 15 minutes.
bench-import:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/import.sh

## Repair at scale: a 3-node cluster with 1M packets (BENCH_REPAIR_KEYS); a new learner's
## catch-up against a follower whose state.redb is rebuilt from the cluster and from its own
## snapshot, interleaved, 3 rounds (BENCH_REPAIR_ROUNDS). Opt-in, not in CI: about 15 minutes.
bench-repair:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/repair.sh

## RSS of one node at 1M stored packets, with the DNS record cache at its bound (about 5 minutes).
bench-memory:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	tests/bench/memory.sh $(TARGET_DIR)/release

## Abuse scenarios against one release node with the default limits (PUT flood, a million
## client addresses through a trusted proxy, UDP flood, slowloris): memory, CPU, and what a
## legitimate client gets meanwhile; then hostile clients against a 3-node release cluster
## whose nodes may open 4,096 descriptors: connection floods past that on every listener, idle,
## slow and keep-alive connections, strangers on the peer and admin listeners, 100,000 requests
## with made-up methods and paths, a UDP flood from 10,000 networks (PHASE_SECONDS, default 20,
## per attack; FLOOD_CONNECTIONS, default 5,000; about 8 minutes in all; docs/TESTING.md);
## then admission against a 3-node release cluster: republishes during new-key floods from 256
## addresses, 256 /56s of one /48 and 4,096 addresses of 16 /24s, changes to 500 stored keys,
## 1,000 endpoints behind one address, a flood refused whole, the flood against a cap, 100,000
## keys republished from one address following Retry-After (about 11 minutes), and the fair
## shares of the resolve, DoH and UDP budgets (about 23 minutes in all).
## Silent and one-way partitions beside kills: 3 release nodes in network namespaces, the leader
## SIGKILLed or cut off by iptables drops (20 trials each, 5 of each one-way cut), then followers
## cut off for 30 s and healed, with and without PreVote (root, ip, iptables; about 8 minutes).
bench-partitions:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN=$(TARGET_DIR)/release tests/bench/partitions.sh

bench-abuse:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	tests/bench/abuse.sh $(TARGET_DIR)/release
	tests/bench/hostile.sh $(TARGET_DIR)/release
	tests/bench/admission.sh $(TARGET_DIR)/release

## Each cargo-fuzz target (relay payload, DNS request, config) for FUZZ_SECONDS (default 30)
## from its seeds; needs cargo-fuzz (`cargo install cargo-fuzz --locked`). CI runs it.
fuzz-smoke:
	tests/fuzz/smoke.sh

## Chaos tests (docs/TESTING.md): a 3- or 5-node cluster of the release binary under a seeded
## fault schedule (SIGKILL, SIGSTOP, partitions, lossy and slow links, membership changes,
## snapshots) and concurrent traffic; the history is checked for linearizability, durability,
## monotonic stale reads and convergence. SEED=n replays a schedule; RUNS (3), NODES (3 or 5) and
## ROUNDS (3 rounds of every fault kind, about 4 minutes a run) size it. POWER=1 puts the nodes'
## data dirs on lossy disks and adds power cuts (root and /dev/fuse); POWER=only runs power cuts
## alone. DISK=1 adds disks low on space (below raft.min_free_disk_mib), on lossy disks too.
## CORRUPT=1 adds damage to one node's data on disk (its log, its state, its snapshot); CORRUPT=only runs
## that damage alone. PARTITIONS=only runs the peer network's partitions alone. CLOCKS=1 adds wall
## clocks stepped ahead, back and drifting (libfaketime); CLOCKS=only runs those alone. MIXED=1
## runs 1 to NODES-1 members (the seed picks them) on the previous release
## (tests/upgrade/previous.sh builds it), the others on this build; not with CLOCKS.
chaos:
	$(CARGO) build --release --locked -p pkraft -p pkraft-chaos
	CHAOS_BIN_DIR=$(TARGET_DIR)/release tests/chaos/run.sh

## The simulated cluster (docs/SIMULATION.md): the real node code on turmoil's network and
## paused clocks, seeded, in a build of its own (target/sim, profile `sim`: release speed with
## debug assertions on) with tokio's
## scheduler seeded too (--cfg tokio_unstable, which turmoil reads to seed each host's runtime
## from the run's seed), so that a seed replays its run exactly; the determinism test runs only
## there. A failure names its seed; SIM_SEEDS=<seed> or <first>-<last> picks them. Without the
## seeded scheduler (the workspace's debug build) the same tests run in `make test`. The flag changes every crate's build, hence the target dir; the first build takes
## about 4 minutes, and `make sim-long` uses the same one.
SIM_RUSTFLAGS := --cfg tokio_unstable $(if $(filter x86_64,$(shell uname -m)),--cfg curve25519_dalek_backend="avx512")
sim:
	RUSTFLAGS='$(SIM_RUSTFLAGS)' CARGO_TARGET_DIR=$(TARGET_DIR)/sim $(CARGO) test --profile sim -p pkraft-sim --locked -- --nocapture

## The simulator's long run (tests/sim/long.sh, docs/TESTING.md): the fault test over SIM_SEEDS
## (default 1-2000) in the same seeded build as `make sim`, one process per core
## (SIM_JOBS); prints the runs, the faults made by kind and the faults an hour.
sim-long:
	SIM_TARGET_DIR=$(TARGET_DIR)/sim tests/sim/long.sh

## Bugs this project fixed, put back one at a time (pkraft_types::planted), each to be found
## by the simulator within 10 minutes (crates/pkraft-sim/tests/planted.rs; docs/SIMULATION.md).
sim-planted:
	RUSTFLAGS='$(SIM_RUSTFLAGS)' CARGO_TARGET_DIR=$(TARGET_DIR)/sim $(CARGO) test --profile sim -p pkraft-sim --features planted-bugs --locked --test planted -- --nocapture

## The simulator's CI run: `make sim-long` over 1,600 seeds (about 11,000 faults of twelve kinds,
## about two minutes), then its first 100 seeds again in another process, each to give
## the same history.
sim-ci:
	SIM_SEEDS=$${SIM_SEEDS:-1-1600} SIM_REPLAY=$${SIM_REPLAY:-100} SIM_PRINT_RUNS=0 SIM_TARGET_DIR=$(TARGET_DIR)/sim tests/sim/long.sh

## One round of every fault kind, the damaged-disk and clock kinds too, on a 3-node cluster of
## the test build's binary, seed 1 unless SEED is given (CI; about 3 minutes; libfaketime).
chaos-smoke:
	$(CARGO) test --workspace --locked --no-run
	CHAOS_BIN_DIR=$(TARGET_DIR)/debug SEED=$${SEED:-1} RUNS=1 ROUNDS=1 CORRUPT=1 CLOCKS=1 tests/chaos/run.sh

## Power cuts on lossy disks (pkraft-lossyfs; root and /dev/fuse): two seeds of two rounds of
## every power-cut kind and of a bad write (a log append the disk acknowledged and lost or
## misdirected, shown by a power cut) on a 3-node cluster of the test build's binary (CI; about
## 2 minutes).
chaos-power-smoke:
	$(CARGO) test --workspace --locked --no-run
	CHAOS_BIN_DIR=$(TARGET_DIR)/debug SEED=$${SEED:-1} RUNS=2 ROUNDS=2 POWER=only tests/chaos/run.sh

## The benchmark harness with tiny counts, pkraft only, on the test build's binaries (CI).
bench-smoke:
	$(CARGO) test --workspace --locked --no-run
	BENCH_BIN_DIR=$(TARGET_DIR)/debug tests/bench/run.sh smoke

## The CI gate (.ci/run): read-only checks, tests, the end-to-end checks, the deployment-file
## checks, the benchmark smoke, the fuzz smoke, the chaos smoke, the power-cut smoke and the
## upgrade smoke; the simulator's seeded build and its CI run of about 10,000 faults.
## Each stage's wall time is printed as it ends, and all of them at the end ("ci: stage took N
## s"), so that a run's log shows where CI's time goes (docs/TESTING.md has the last one).
CI_STAGES := fmt-check lint test e2e deploy-check bench-smoke fuzz-smoke chaos-smoke chaos-power-smoke upgrade-smoke sim sim-ci
## A stage that fails stops the loop (with `make -k ci`, the loop goes on to the next stage), and
## the times so far are printed, the failed stage's as "FAILED after N s"; the exit status is 1.
CI_KEEP_GOING := $(findstring k,$(firstword -$(MAKEFLAGS)))
ci:
	@took=""; failed=""; for stage in $(CI_STAGES); do \
	  started=$$(date +%s); \
	  if $(MAKE) --no-print-directory $$stage; then outcome="took"; \
	  else outcome="FAILED after"; failed="$$failed $$stage"; fi; \
	  line="ci: $$stage $$outcome $$(( $$(date +%s) - started )) s"; echo "$$line"; took="$$took$$line\n"; \
	  if [ -n "$$failed" ] && [ -z "$(CI_KEEP_GOING)" ]; then break; fi; \
	done; printf '%b' "$$took"; \
	if [ -n "$$failed" ]; then echo "ci: failed:$$failed"; exit 1; fi

## The snapshot install alone, the part of a learner's catch-up after the transfer
## (crates/pkraft-state/examples/install_time.rs): INSTALL_RECORDS (default 1000000) iroh-shaped
## packets imported into a fresh state.redb with INSTALL_CACHE_MIB (256) of cache; the snapshot
## is made once in INSTALL_DIR (target/bench-install) and reused.
bench-install:
	$(CARGO) build --release --locked -p pkraft-state --example install_time
	$(TARGET_DIR)/release/examples/install_time $${INSTALL_RECORDS:-1000000} $${INSTALL_CACHE_MIB:-256} $${INSTALL_DIR:-$(TARGET_DIR)/bench-install}

## A rolling upgrade of a 3-node cluster from the previous release (tests/upgrade/PREVIOUS, built
## once into target/upgrade/) to this build and the downgrade back, under writes: every
## acknowledged write on every node, each step's gap without a 204 at most 0.5 s, each build's
## backup restored by the other. Not in CI: the previous release's build takes about 5 minutes
## the first time (docs/TESTING.md, "Rolling upgrades").
upgrade-test:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	UPGRADE_BIN=$(TARGET_DIR)/release tests/upgrade/rolling.sh

## Where a PUT's CPU goes, stage by stage: perf on the release build under make bench's PUT load,
## one node, iroh-dns-server under the same load when `make bench` has installed it
## (BUDGET_IROH=0 leaves it out), and the leader and a follower of a 3-node cluster
## (docs/BENCHMARKS.md, "The budget of a PUT"; about 13 minutes; perf from Debian's linux-perf).
bench-put-budget:
	$(CARGO) build --release --locked -p pkraft -p pkraft-bench
	BENCH_BIN_DIR=$(TARGET_DIR)/release tests/bench/put_budget.sh

## The same rolling upgrade and downgrade with debug builds of both (the previous release's
## built into target/upgrade/<rev>-debug/, about 2 minutes), and one seed of mixed-version chaos
## (MIXED=1, seed 1 unless SEED is given) on the test build's binaries (CI).
upgrade-smoke:
	$(CARGO) test --workspace --locked --no-run
	UPGRADE_PROFILE=debug UPGRADE_BIN=$(TARGET_DIR)/debug tests/upgrade/rolling.sh
	UPGRADE_PROFILE=debug CHAOS_BIN_DIR=$(TARGET_DIR)/debug SEED=$${SEED:-1} RUNS=1 ROUNDS=1 CORRUPT=1 MIXED=1 tests/chaos/run.sh

## What an operator installs, from one git revision (REV, default HEAD): a tarball with the
## binary, configs, systemd files and docs, its SHA256SUMS, and the container image when a docker
## daemon answers; reproducible (deploy/release.sh). Output in target/release-dist/.
release:
	deploy/release.sh $(or $(REV),HEAD)

## Remove the dev server's data (./data).
clean-data:
	rm -rf ./data
