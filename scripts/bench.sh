#!/usr/bin/env bash
# The one benchmark command: provisions like scripts/test.sh (Docker, the
# server images, protoc), starts its own ZooKeeper and etcd containers on
# loopback, builds sharedstate-bench in release, runs every suite (the engine
# on memory/zk/etcd, the raw-client floors, zkstate 0.1.23, and kazoo from a
# virtualenv under target/), then writes BENCHMARKS.md and bench/report/*.svg.
#
#   bash scripts/bench.sh           full run (~15 min on 2 cores)
#   bash scripts/bench.sh --smoke   seconds: few samples, fan-out 5; writes
#                                   only under target/bench-smoke/ (CI)
#
# Environment:
#   SHAREDSTATE_ZOOKEEPER_IMAGE / SHAREDSTATE_ETCD_IMAGE  images to run
#       (default: the official ones if present, else the local test images)
#   SHAREDSTATE_BENCH_ZK / SHAREDSTATE_BENCH_ETCD  host:port of running
#       servers to use instead of starting containers
#   SHAREDSTATE_BENCH_NO_KAZOO=1  skip the kazoo peer (no PyPI access)
#   SHAREDSTATE_BENCH_RELEASE=1   smoke run on a release build (default:
#       debug, which scripts/test.sh has already built)
#
# Only the containers this script starts (label sharedstate.bench=1 and
# this script's pid) are stopped, on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SMOKE=0
for arg in "$@"; do
	case "$arg" in
	--smoke) SMOKE=1 ;;
	-h | --help)
		sed -n '2,22p' "$0"
		exit 0
		;;
	*)
		echo "unknown argument: $arg (try --smoke)" >&2
		exit 2
		;;
	esac
done

log() { printf '==> [bench.sh] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

ZOOKEEPER_OFFICIAL_IMAGE=zookeeper:3.9
ETCD_OFFICIAL_IMAGE=gcr.io/etcd-development/etcd:v3.5.17
ZOOKEEPER_LOCAL_IMAGE=sharedstate-test/zookeeper:local
ETCD_LOCAL_IMAGE=sharedstate-test/etcd:local
LABEL=sharedstate.bench=1
if ((SMOKE)); then
	RESULTS="$ROOT/target/bench-smoke/results"
	MARKDOWN="$ROOT/target/bench-smoke/BENCHMARKS.md"
	PLOTS="$ROOT/target/bench-smoke/report"
	SMOKE_FLAG=(--smoke)
else
	RESULTS="$ROOT/target/bench-results"
	MARKDOWN="$ROOT/BENCHMARKS.md"
	PLOTS="$ROOT/bench/report"
	SMOKE_FLAG=()
fi

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- provision
# scripts/test.sh owns provisioning (packages, dockerd, images): run its
# provision steps unless everything they make is already here.
need_servers=0
[[ -z "${SHAREDSTATE_BENCH_ZK:-}" || -z "${SHAREDSTATE_BENCH_ETCD:-}" ]] && need_servers=1
provisioned() {
	command -v protoc >/dev/null || return 1
	((need_servers)) || return 0
	timeout 15 docker info >/dev/null 2>&1 || return 1
	{ have_image "${SHAREDSTATE_ZOOKEEPER_IMAGE:-$ZOOKEEPER_LOCAL_IMAGE}" || have_image "$ZOOKEEPER_OFFICIAL_IMAGE"; } || return 1
	{ have_image "${SHAREDSTATE_ETCD_IMAGE:-$ETCD_LOCAL_IMAGE}" || have_image "$ETCD_OFFICIAL_IMAGE"; } || return 1
}
if ! provisioned; then
	log "provisioning through scripts/test.sh (SHAREDSTATE_TEST_ONLY=provision)"
	SHAREDSTATE_TEST_ONLY=provision bash "$ROOT/scripts/test.sh" || die "provisioning failed"
fi

pick() { # pick VAR OFFICIAL LOCAL: the image to run
	local var="$1" chosen="${!1:-}"
	if [[ -n "$chosen" ]]; then
		echo "$chosen"
	elif have_image "$2"; then
		echo "$2"
	else
		echo "$3"
	fi
}

# ------------------------------------------------------------------ servers
STARTED=()
cleanup() {
	local id
	for id in "${STARTED[@]}"; do
		docker rm -f -v "$id" >/dev/null 2>&1 || true
	done
}
trap cleanup EXIT

start() { # start IMAGE PORT [ARGS...]: runs a labelled container, prints its id
	local image="$1" port="$2"
	shift 2
	docker run -d --label "$LABEL" --label "sharedstate.bench.pid=$$" \
		-e ZOO_MAX_CLIENT_CNXNS=0 -p "127.0.0.1::$port" "$image" "$@"
}

wait_for() { # wait_for NAME CMD...: until CMD succeeds, 60 s at most
	local name="$1" i
	shift
	for ((i = 0; i < 120; i++)); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.5
	done
	die "$name did not come up within 60 s"
}

ZK="${SHAREDSTATE_BENCH_ZK:-}"
ETCD="${SHAREDSTATE_BENCH_ETCD:-}"
if [[ -z "$ZK" ]]; then
	image="$(pick SHAREDSTATE_ZOOKEEPER_IMAGE "$ZOOKEEPER_OFFICIAL_IMAGE" "$ZOOKEEPER_LOCAL_IMAGE")"
	id="$(start "$image" 2181)"
	STARTED+=("$id")
	ZK="$(docker port "$id" 2181 | head -n 1)"
	log "ZooKeeper ($image) at $ZK"
	wait_for ZooKeeper docker exec "$id" bash -c 'echo ruok | (exec 3<>/dev/tcp/127.0.0.1/2181; cat >&3; cat <&3) | grep -q imok'
	export SHAREDSTATE_BENCH_ZK_VERSION="$image, $(docker exec "$id" bash -c 'echo srvr | (exec 3<>/dev/tcp/127.0.0.1/2181; cat >&3; cat <&3)' 2>/dev/null | head -n 1 | sed 's/,.*//')"
fi
if [[ -z "$ETCD" ]]; then
	image="$(pick SHAREDSTATE_ETCD_IMAGE "$ETCD_OFFICIAL_IMAGE" "$ETCD_LOCAL_IMAGE")"
	id="$(start "$image" 2379 /usr/local/bin/etcd --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://0.0.0.0:2379)"
	STARTED+=("$id")
	ETCD="$(docker port "$id" 2379 | head -n 1)"
	log "etcd ($image) at $ETCD"
	wait_for etcd docker exec "$id" /usr/local/bin/etcdctl endpoint health
	export SHAREDSTATE_BENCH_ETCD_VERSION="$image, $(docker exec "$id" /usr/local/bin/etcd --version 2>/dev/null | head -n 1)"
fi

# -------------------------------------------------------------------- build
# The full run measures a release build. The smoke run only proves the bench
# still works, so it reuses the debug build scripts/test.sh already made
# (a release build of tonic/etcd-client would take minutes in CI).
if ((SMOKE)) && [[ "${SHAREDSTATE_BENCH_RELEASE:-0}" != 1 ]]; then
	log "building sharedstate-bench (debug: smoke mode)"
	cargo build -p sharedstate-bench
	BENCH="$ROOT/target/debug/sharedstate-bench"
else
	log "building sharedstate-bench (release)"
	cargo build -p sharedstate-bench --release
	BENCH="$ROOT/target/release/sharedstate-bench"
fi

# ---------------------------------------------------------------------- run
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
log "running the Rust suites (memory, zk, zkstate, etcd)"
"$BENCH" run "${SMOKE_FLAG[@]}" --zk "$ZK" --etcd "$ETCD" --out "$RESULTS"

if [[ "${SHAREDSTATE_BENCH_NO_KAZOO:-0}" != 1 ]]; then
	VENV="$ROOT/target/bench-venv"
	if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import kazoo' 2>/dev/null; then
		log "installing kazoo into $VENV"
		if ! python3 -m venv "$VENV" 2>/dev/null; then
			log "python3 -m venv failed: installing python3-venv"
			rm -rf "$VENV"
			{ apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null; } ||
				die "cannot install python3-venv (set SHAREDSTATE_BENCH_NO_KAZOO=1 to skip kazoo)"
			python3 -m venv "$VENV" || die "python3 -m venv failed"
		fi
		"$VENV/bin/pip" install -q kazoo || die "pip install kazoo failed (set SHAREDSTATE_BENCH_NO_KAZOO=1 to skip)"
	fi
	log "running the kazoo peer ($("$VENV/bin/python" -c 'import kazoo.version as v; print(v.__version__)' 2>/dev/null || echo '?'))"
	timeout 900 "$VENV/bin/python" "$ROOT/bench/kazoo_bench.py" "${SMOKE_FLAG[@]}" --hosts "$ZK" --out "$RESULTS/zk-kazoo.json"
fi

log "writing $MARKDOWN and the plots in $PLOTS"
"$BENCH" report --results "$RESULTS" --markdown "$MARKDOWN" --plots "$PLOTS"
# A scenario that could not run at all is a failure (so CI's smoke run
# catches a bench that rotted); errors counted inside a scenario are data.
failed="$(grep -l '"variant": "failed"' "$RESULTS"/*.json || true)"
if [[ -n "$failed" ]]; then
	die "scenarios failed to run (see 'failed' records in: $(echo $failed))"
fi
log "done"
