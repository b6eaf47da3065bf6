#!/usr/bin/env bash
# The long run of the cluster fault suite (tests/cluster_faults.rs), with a
# report: on a 3-member ZooKeeper ensemble and a 3-member etcd cluster, a
# workload of locked and optimistic appenders, a locked counter and readers,
# under every fault (cut a client's connection, kill the node a client is
# on, kill the leader, pause a node past the session timeout) repeated
# SHAREDSTATE_CHAOS_REPEAT times (default 3) per run, REPETITIONS runs per
# backend (default 2). Fails on any violation; writes the tables to
# target/chaos-report.md.
#
#   bash scripts/chaos.sh [REPETITIONS]
#
# Provisions like scripts/test.sh (Docker, images), then runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REPETITIONS="${1:-2}"
export SHAREDSTATE_CHAOS_REPEAT="${SHAREDSTATE_CHAOS_REPEAT:-3}"
REPORT="$ROOT/target/chaos-report.md"
export SHAREDSTATE_CHAOS_REPORT="$REPORT"

# Docker, the images and their variables, as the test command does.
SHAREDSTATE_TEST_ONLY=packages,docker,images,cleanup bash scripts/test.sh
if [[ -z "${SHAREDSTATE_ZOOKEEPER_IMAGE:-}" ]]; then
	if docker image inspect zookeeper:3.9 >/dev/null 2>&1; then
		export SHAREDSTATE_ZOOKEEPER_IMAGE=zookeeper:3.9
	else
		export SHAREDSTATE_ZOOKEEPER_IMAGE=sharedstate-test/zookeeper:local
	fi
fi
if [[ -z "${SHAREDSTATE_ETCD_IMAGE:-}" ]]; then
	if docker image inspect gcr.io/etcd-development/etcd:v3.5.17 >/dev/null 2>&1; then
		export SHAREDSTATE_ETCD_IMAGE=gcr.io/etcd-development/etcd:v3.5.17
	else
		export SHAREDSTATE_ETCD_IMAGE=sharedstate-test/etcd:local
	fi
fi

mkdir -p "$ROOT/target"
{
	echo "# Cluster fault suite: long run"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores; $REPETITIONS runs per backend, every fault $SHAREDSTATE_CHAOS_REPEAT times per run;"
	echo "images $SHAREDSTATE_ZOOKEEPER_IMAGE and $SHAREDSTATE_ETCD_IMAGE."
} >"$REPORT"

cargo test -p sharedstate --all-features --test cluster_faults --no-run
status=0
for run in $(seq 1 "$REPETITIONS"); do
	echo "==> [chaos.sh] run $run of $REPETITIONS"
	# One backend at a time: the cores are few, and the faults are timed.
	cargo test -p sharedstate --all-features --test cluster_faults -- --test-threads 1 || status=1
done
echo "==> [chaos.sh] report: $REPORT"
exit "$status"
