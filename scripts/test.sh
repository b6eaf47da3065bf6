#!/usr/bin/env bash
# shellcheck disable=SC2317 # the step_* functions are called indirectly
# The one test command (README, .ci/run): provisions what the tests need on a
# fresh Debian machine, then formats, lints, builds and tests the workspace.
#
#   bash scripts/test.sh
#
# Steps, in order (a failing step stops the run, except fmt which is reported
# at the end):
#   packages  apt-get install what is missing: docker.io, iptables,
#             ca-certificates, protobuf-compiler and libprotobuf-dev
#             (etcd-client needs protoc and the well-known .proto files)
#   protoc    check that protoc compiles a .proto importing the well-known
#             types (google/protobuf/descriptor.proto), as etcd-client's
#             build script will; fails with the fix when it cannot
#   docker    start dockerd in the background when no daemon answers
#   images    pull the official ZooKeeper / etcd images, or, when no registry
#             answers, build local ones (scripts/build-test-images.sh, needs
#             mmdebstrap) and export SHAREDSTATE_ZOOKEEPER_IMAGE /
#             SHAREDSTATE_ETCD_IMAGE for the tests
#   kazoo     a Python venv with kazoo (target/kazoo-venv) for the lock
#             interop tests; exports SHAREDSTATE_KAZOO_PYTHON
#   cleanup   remove containers and networks labelled sharedstate.test=1
#             whose test process is gone (the fixtures' reaper missed them)
#   fmt       cargo fmt --all -- --check
#   clippy    cargo clippy --workspace --all-targets --all-features -- -D warnings
#   doc       cargo doc --workspace --no-deps --all-features, warnings denied
#   package   cargo publish --workspace --dry-run --no-verify: every crate meant
#             for crates.io packages, each .crate carries LICENSE-MIT,
#             LICENSE-APACHE and README.md (publish = false crates skipped)
#   msrv      cargo +<rust-version> check --workspace --all-targets
#             --all-features --locked (rustup installs that toolchain if missing)
#   build     cargo test --workspace --all-features --no-run
#   test      cargo test --workspace --all-features --no-fail-fast
#   fuzz      the property tests (proptest, every test named prop_*: the
#             differ, payloads, keys, URLs, patches) again with
#             SHAREDSTATE_PROPTEST_CASES cases each (default 4096), then
#             every libFuzzer target in fuzz/ for SHAREDSTATE_FUZZ_SECONDS
#             (default 10) on stable (scripts/fuzz.sh --stable); the long
#             runs by hand: scripts/fuzz.sh
#   bench     scripts/bench.sh --smoke: every benchmark scenario, briefly
#
# Environment:
#   SHAREDSTATE_TEST_ONLY   comma-separated steps or groups to run
#                           (provision = packages,protoc,docker,images,kazoo,cleanup;
#                           check = fmt,clippy,doc,package,msrv; tests = build,test,fuzz,bench);
#                           default: everything
#   SHAREDSTATE_ZOOKEEPER_IMAGE / SHAREDSTATE_ETCD_IMAGE
#                           use these images (pulled or built by hand)
#   SHAREDSTATE_TEST_ZOOKEEPER / SHAREDSTATE_TEST_ETCD
#                           host:port of running servers: the tests use them
#                           instead of starting containers
#   SHAREDSTATE_PROPTEST_CASES
#                           cases per property test in step fuzz (default 4096)
#   SHAREDSTATE_FUZZ_SECONDS
#                           seconds per libFuzzer target in step fuzz (default 10)
#   SHAREDSTATE_DOCKERD_LOG dockerd's log when this script starts it
#                           (default /tmp/sharedstate-dockerd.log)
#
# The dockerd this script starts keeps running afterwards, for the next run.
# To add a step: write step_<name>, and add <name> to STEPS (and a group).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

STEPS=(packages protoc docker images kazoo cleanup fmt clippy doc package msrv build test fuzz bench)
# Selection groups (SHAREDSTATE_TEST_ONLY) and timing phases of each step.
declare -A GROUP=(
	[packages]=provision [protoc]=provision [docker]=provision [images]=provision [kazoo]=provision
	[cleanup]=provision
	[fmt]=check [clippy]=check [doc]=check [package]=check [msrv]=check
	[build]=tests [test]=tests [fuzz]=tests [bench]=tests
)
declare -A PHASE=(
	[packages]=provision [protoc]=provision [docker]=provision [images]=provision [kazoo]=provision
	[cleanup]=provision
	[fmt]=build [clippy]=build [doc]=build [package]=build [msrv]=build
	[build]=build [test]=tests [fuzz]=tests [bench]=tests
)
NONFATAL=" fmt " # a failing non-fatal step lets the others run, and fails the run at the end

ZOOKEEPER_OFFICIAL_IMAGE=zookeeper:3.9
ETCD_OFFICIAL_IMAGE=gcr.io/etcd-development/etcd:v3.5.17
ZOOKEEPER_LOCAL_IMAGE=sharedstate-test/zookeeper:local
ETCD_LOCAL_IMAGE=sharedstate-test/etcd:local
DOCKERD_LOG="${SHAREDSTATE_DOCKERD_LOG:-/tmp/sharedstate-dockerd.log}"
DOCKERD_START_TIMEOUT=60 # seconds
PULL_TIMEOUT=45          # seconds per image
TEST_LABEL=sharedstate.test=1

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# One build per run: incremental caches only cost disk (gigabytes) here.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
MIN_FREE_DISK_GB=6 # a full run's target/ needs about 5 GB

log() { printf '\n==> [test.sh] %s\n' "$*" >&2; }
warn() { printf '==> [test.sh] WARNING: %s\n' "$*" >&2; }
err() { printf '==> [test.sh] ERROR: %s\n' "$*" >&2; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
free_disk_gb() { df -Pk "$ROOT" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }'; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.1f", e - s }'; }
as_root() {
	if [[ "$(id -u)" == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo -n "$@"
	else
		err "need root for: $*"
		return 1
	fi
}

# ---------------------------------------------------------------- provision

APT_UPDATED=0
apt_install() { # apt_install PKG...: installs the packages (one apt-get update per run)
	log "installing: $*"
	if ((APT_UPDATED == 0)); then
		as_root apt-get update -qq || return 1
		APT_UPDATED=1
	fi
	as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null || return 1
}

step_packages() {
	local missing=()
	command -v dockerd >/dev/null || missing+=(docker.io)
	command -v docker >/dev/null || missing+=(docker.io)
	command -v iptables >/dev/null || missing+=(iptables)
	[[ -e /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
	command -v protoc >/dev/null || missing+=(protobuf-compiler)
	# etcd-client's build script needs the well-known types (descriptor.proto
	# ...), which are in libprotobuf-dev: a Recommends that
	# --no-install-recommends leaves out.
	[[ -e /usr/include/google/protobuf/descriptor.proto ]] || missing+=(libprotobuf-dev)
	# `ss -K` for the reconnect test; venv for kazoo (the lock interop tests).
	command -v ss >/dev/null || missing+=(iproute2)
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
	if [[ -d /sys/fs/cgroup && ! -e /sys/fs/cgroup/cgroup.controllers && ! -d /sys/fs/cgroup/devices ]]; then
		command -v cgroupfs-mount >/dev/null || missing+=(cgroupfs-mount)
	fi
	if ((${#missing[@]})); then
		# shellcheck disable=SC2207
		missing=($(printf '%s\n' "${missing[@]}" | sort -u))
		apt_install "${missing[@]}" || return 1
	else
		log "packages: all present"
	fi
}

# What etcd-client's build script (prost / tonic) asks of protoc: compile
# protos that import the well-known types. Honours PROTOC and
# PROTOC_INCLUDE as prost-build does.
step_protoc() {
	local protoc="${PROTOC:-protoc}" dir out includes=()
	if ! command -v "$protoc" >/dev/null; then
		err "protoc not found (PROTOC=${PROTOC:-unset}). Fix: apt-get install protobuf-compiler libprotobuf-dev"
		return 1
	fi
	[[ -n "${PROTOC_INCLUDE:-}" ]] && includes=(-I "$PROTOC_INCLUDE")
	dir="$(mktemp -d)"
	cat >"$dir/check.proto" <<-'PROTO'
		syntax = "proto3";
		package sharedstate.check;
		import "google/protobuf/descriptor.proto";
		import "google/protobuf/timestamp.proto";
		message Check { google.protobuf.Timestamp at = 1; google.protobuf.FileDescriptorProto file = 2; }
	PROTO
	if out="$("$protoc" -I "$dir" "${includes[@]}" -o /dev/null "$dir/check.proto" 2>&1)"; then
		rm -rf "$dir"
		log "protoc: $("$protoc" --version) resolves the well-known types"
		return 0
	fi
	rm -rf "$dir"
	err "protoc cannot resolve the well-known types: $out"
	err "Fix: apt-get install libprotobuf-dev (it holds /usr/include/google/protobuf/*.proto;"
	err "     apt-get install --no-install-recommends protobuf-compiler leaves it out),"
	err "     or set PROTOC_INCLUDE to a directory holding google/protobuf/descriptor.proto."
	return 1
}

docker_answers() { timeout 15 docker info >/dev/null 2>&1; }

step_docker() {
	if docker_answers; then
		log "docker: a daemon answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
		return 0
	fi
	# Neither cgroup v2 nor the v1 hierarchies mounted (no init system did it).
	if [[ -d /sys/fs/cgroup && ! -e /sys/fs/cgroup/cgroup.controllers && ! -d /sys/fs/cgroup/devices ]]; then
		log "docker: mounting the cgroup hierarchies"
		as_root cgroupfs-mount || warn "cgroupfs-mount failed"
	fi
	local pidfile=/var/run/docker.pid pid=""
	if [[ -f "$pidfile" ]]; then
		pid="$(cat "$pidfile" 2>/dev/null || true)"
		if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]; then
			log "docker: dockerd ($pid) is running but does not answer yet; waiting for it"
		else
			log "docker: removing the stale $pidfile (pid ${pid:-?} is gone)"
			as_root rm -f "$pidfile"
			pid=""
		fi
	fi
	if [[ -z "$pid" ]]; then
		if [[ -S /var/run/docker.sock ]]; then
			log "docker: removing the stale /var/run/docker.sock"
			as_root rm -f /var/run/docker.sock
		fi
		log "docker: starting dockerd in the background (log: $DOCKERD_LOG)"
		# setsid + nohup: it outlives this script (and its terminal), so the
		# next run and the developer's own cargo test find it.
		as_root setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
		pid=$!
	fi
	local start deadline
	start="$(now)"
	deadline=$((SECONDS + DOCKERD_START_TIMEOUT))
	until docker_answers; do
		if ((SECONDS >= deadline)); then
			err "dockerd did not answer within ${DOCKERD_START_TIMEOUT}s; last lines of $DOCKERD_LOG:"
			tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null
			return 1
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			err "dockerd exited; last lines of $DOCKERD_LOG:"
			tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null
			return 1
		fi
		sleep 0.5
	done
	log "docker: daemon up after $(elapsed "$start" "$(now)") s"
	TIMING_NOTES+=("dockerd start: $(elapsed "$start" "$(now)") s")
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

try_pull() { # try_pull IMAGE: pulls within PULL_TIMEOUT; quiet on failure
	log "images: trying docker pull $1 (at most ${PULL_TIMEOUT}s)"
	if timeout "$PULL_TIMEOUT" docker pull -q "$1" >/dev/null 2>/tmp/sharedstate-pull.err; then
		return 0
	fi
	warn "cannot pull $1: $(tail -n 1 /tmp/sharedstate-pull.err 2>/dev/null)"
	return 1
}

# pick_image VAR OFFICIAL LOCAL: sets VAR to an image that is present:
# the one VAR names, else the official one (present or pulled), else LOCAL
# (built when needed).
pick_image() {
	local var="$1" official="$2" local_image="$3" chosen="${!1:-}"
	if [[ -n "$chosen" && "$chosen" == "$local_image" ]]; then
		NEED_LOCAL_IMAGES=1 # built below when absent
	elif [[ -n "$chosen" ]]; then
		have_image "$chosen" || try_pull "$chosen" || {
			err "$var=$chosen is neither present nor pullable"
			return 1
		}
	elif have_image "$official" || try_pull "$official"; then
		chosen="$official"
	else
		chosen="$local_image"
		NEED_LOCAL_IMAGES=1
	fi
	export "$var=$chosen"
}

step_images() {
	NEED_LOCAL_IMAGES=0
	pick_image SHAREDSTATE_ZOOKEEPER_IMAGE "$ZOOKEEPER_OFFICIAL_IMAGE" "$ZOOKEEPER_LOCAL_IMAGE" || return 1
	pick_image SHAREDSTATE_ETCD_IMAGE "$ETCD_OFFICIAL_IMAGE" "$ETCD_LOCAL_IMAGE" || return 1
	if ((NEED_LOCAL_IMAGES)); then
		if ! have_image "$ZOOKEEPER_LOCAL_IMAGE" || ! have_image "$ETCD_LOCAL_IMAGE"; then
			command -v mmdebstrap >/dev/null || apt_install mmdebstrap || return 1
		fi
		bash "$ROOT/scripts/build-test-images.sh" || return 1
	fi
	log "images: SHAREDSTATE_ZOOKEEPER_IMAGE=$SHAREDSTATE_ZOOKEEPER_IMAGE SHAREDSTATE_ETCD_IMAGE=$SHAREDSTATE_ETCD_IMAGE"
}

# Python's kazoo for the lock interop tests (backend-zookeeper/tests/kazoo_interop.rs),
# in a venv under target/ (gitignored), from PyPI.
KAZOO_VENV="$ROOT/target/kazoo-venv"
step_kazoo() {
	if [[ -x "$KAZOO_VENV/bin/python" ]] && "$KAZOO_VENV/bin/python" -c 'import kazoo' 2>/dev/null; then
		log "kazoo: present in $KAZOO_VENV"
	else
		if ! python3 -m venv "$KAZOO_VENV" 2>/dev/null; then
			rm -rf "$KAZOO_VENV"
			apt_install python3-venv python3-pip || return 1
			python3 -m venv "$KAZOO_VENV" || return 1
		fi
		log "kazoo: pip install kazoo into $KAZOO_VENV"
		"$KAZOO_VENV/bin/pip" install -q kazoo || return 1
	fi
	export SHAREDSTATE_KAZOO_PYTHON="$KAZOO_VENV/bin/python"
}

step_cleanup() {
	local id pid removed=0 networks=0
	for id in $(docker ps -aq --filter "label=$TEST_LABEL"); do
		pid="$(docker inspect --format '{{index .Config.Labels "sharedstate.test.pid"}}' "$id" 2>/dev/null)"
		# Still used by a live test process (another cargo test on this machine).
		if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
			continue
		fi
		docker rm -f -v "$id" >/dev/null && removed=$((removed + 1))
	done
	# The cluster fixtures' networks (after their containers, which use them).
	for id in $(docker network ls -q --filter "label=$TEST_LABEL"); do
		pid="$(docker network inspect --format '{{index .Labels "sharedstate.test.pid"}}' "$id" 2>/dev/null)"
		if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
			continue
		fi
		docker network rm "$id" >/dev/null && networks=$((networks + 1))
	done
	log "cleanup: removed $removed leftover test container(s) and $networks network(s)"
}

# -------------------------------------------------------------------- build

step_fmt() {
	local color=()
	[[ -t 2 ]] || color=(--color never) # plain diffs in CI logs
	cargo fmt --all -- --check "${color[@]}"
}
step_clippy() { cargo clippy --workspace --all-targets --all-features -- -D warnings; }
# Every public item documented, no broken links (the binary's docs are --help).
step_doc() { RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --all-features; }

# Packages every publishable crate without uploading; internal dependencies
# not yet on crates.io resolve from the packages made in the same run.
# --no-verify: building each .crate again would take minutes; the build step
# compiles the same sources. --allow-dirty: a developer's uncommitted files.
# Then each packaged crate's file list must hold both licenses and a README.
step_package() {
	local log name files file packaged=0 incomplete=0
	log="$(mktemp)"
	cargo publish --workspace --dry-run --no-verify --allow-dirty 2>&1 | tee "$log" >&2
	if ((PIPESTATUS[0] != 0)); then
		rm -f "$log"
		return 1
	fi
	if grep -q 'already exists on crates.io index' "$log"; then
		warn "package: a crate name and version is already on crates.io (above): publishing would fail"
	fi
	while read -r name; do
		packaged=$((packaged + 1))
		files="$(cargo package --list --allow-dirty -p "$name" 2>/dev/null)" || {
			err "package: cargo package --list -p $name failed"
			incomplete=1
			continue
		}
		for file in LICENSE-MIT LICENSE-APACHE README.md; do
			if ! grep -Fqx "$file" <<<"$files"; then
				err "package: $name does not carry $file"
				incomplete=1
			fi
		done
	done < <(sed -n 's/^ *Packaging \([^ ]*\) v[^ ]* .*/\1/p' "$log")
	rm -f "$log"
	if ((packaged == 0)); then
		err "package: no 'Packaging <crate> <version>' line in cargo's output"
		return 1
	fi
	((incomplete == 0)) || return 1
	log "package: $packaged crate(s) packaged, each with both licenses and its README"
}

# The declared rust-version (workspace.package) really builds, with Cargo.lock:
# every library and binary with every feature, except the test support
# (sharedstate-conformance, and the facade's `testing` feature on it), whose
# testcontainers 0.28 needs Rust 1.88 (conformance-tests/Cargo.toml says
# why it is pinned); the test targets use it, so they build on stable only.
MSRV_EXEMPT_PACKAGE=sharedstate-conformance
MSRV_EXEMPT_FEATURES=" sharedstate/testing "
step_msrv() {
	local msrv features
	msrv="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
	[[ -n "$msrv" ]] || { err "msrv: no rust-version in Cargo.toml"; return 1; }
	if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
		log "msrv: installing Rust $msrv (rustup, minimal profile)"
		rustup toolchain install "$msrv" --profile minimal || return 1
	fi
	features="$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
exempt = sys.argv[1].split()
for package in json.load(sys.stdin)["packages"]:
    if package["name"] == sys.argv[2]:
        continue
    for feature in package["features"]:
        name = package["name"] + "/" + feature
        if name not in exempt:
            print(name)
' "$MSRV_EXEMPT_FEATURES" "$MSRV_EXEMPT_PACKAGE" | paste -sd, -)" || return 1
	log "msrv: Rust $msrv, libraries and binaries, every feature, without $MSRV_EXEMPT_PACKAGE and:$MSRV_EXEMPT_FEATURES"
	cargo "+$msrv" check --workspace --exclude "$MSRV_EXEMPT_PACKAGE" --lib --bins --features "$features" \
		--locked --target-dir "$ROOT/target/msrv"
}

step_build() { cargo test --workspace --all-features --no-run; }

# -------------------------------------------------------------------- tests

# --no-fail-fast: every test binary runs, so one run shows every failure.
step_test() { cargo test --workspace --all-features --no-fail-fast; }

# The property tests with many more cases than the test step's 256, then a
# bounded libFuzzer run of every target on stable (the sanitizer runs,
# nightly, are by hand: scripts/fuzz.sh).
step_fuzz() {
	PROPTEST_CASES="${SHAREDSTATE_PROPTEST_CASES:-4096}" \
		cargo test --workspace --all-features --no-fail-fast prop_ || return 1
	bash "$ROOT/scripts/fuzz.sh" --stable "${SHAREDSTATE_FUZZ_SECONDS:-10}"
}

# The benchmarks in seconds (debug build, few samples), so they cannot rot;
# the full run is scripts/bench.sh.
step_bench() { bash "$ROOT/scripts/bench.sh" --smoke; }

# --------------------------------------------------------------------- main

selected() { # selected STEP: whether SHAREDSTATE_TEST_ONLY selects it
	local only=",${SHAREDSTATE_TEST_ONLY:-all},"
	[[ "$only" == *",all,"* || "$only" == *",$1,"* || "$only" == *",${GROUP[$1]},"* ]]
}

declare -A PHASE_SECONDS=([provision]=0 [build]=0 [tests]=0)
TIMINGS=()
TIMING_NOTES=()
FAILED=()
RUN_START="$(now)"

summary() {
	local total
	total="$(elapsed "$RUN_START" "$(now)")"
	printf '\n==> [test.sh] timing summary\n' >&2
	local t
	for t in "${TIMINGS[@]}"; do printf '    %s\n' "$t" >&2; done
	for t in "${TIMING_NOTES[@]}"; do printf '    (%s)\n' "$t" >&2; done
	printf '    provisioning %7.1f s | build %7.1f s | tests %7.1f s | total %7.1f s\n' \
		"${PHASE_SECONDS[provision]}" "${PHASE_SECONDS[build]}" "${PHASE_SECONDS[tests]}" "$total" >&2
	if ((${#FAILED[@]})); then
		printf '==> [test.sh] FAILED: %s\n' "${FAILED[*]}" >&2
	else
		printf '==> [test.sh] OK\n' >&2
	fi
}

# The whole run is one function, parsed before it starts: editing this file
# (git pull, checkout) while it runs cannot derail it.
main() {
	if [[ -n "${SHAREDSTATE_TEST_ONLY:-}" ]]; then
		log "SHAREDSTATE_TEST_ONLY=$SHAREDSTATE_TEST_ONLY: running only the selected steps"
	fi
	local step start rc secs phase free
	for step in "${STEPS[@]}"; do
		selected "$step" || continue
		free="$(free_disk_gb)"
		log "step $step ($free GB free on the disk of $ROOT)"
		if awk -v f="$free" -v m="$MIN_FREE_DISK_GB" 'BEGIN { exit !(f < m) }'; then
			warn "less than $MIN_FREE_DISK_GB GB free: the linker crashes when the disk fills (free space, e.g. cargo clean)"
		fi
		start="$(now)"
		"step_$step"
		rc=$?
		secs="$(elapsed "$start" "$(now)")"
		phase="${PHASE[$step]}"
		PHASE_SECONDS[$phase]="$(awk -v a="${PHASE_SECONDS[$phase]}" -v b="$secs" 'BEGIN { printf "%.1f", a + b }')"
		TIMINGS+=("$(printf '%-10s %-9s %7.1f s  %s' "$phase" "$step" "$secs" "$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")")")
		if ((rc != 0)); then
			FAILED+=("$step")
			if [[ "$NONFATAL" != *" $step "* ]]; then
				err "step $step failed (exit $rc)"
				break
			fi
			err "step $step failed (exit $rc); continuing, the run will fail"
		fi
	done
	summary
	((${#FAILED[@]} == 0))
}

# One line, read whole before it runs: after main returns, bash reads on
# from its old offset, which an edit of this file may have moved.
{ main "$@"; exit $?; }
