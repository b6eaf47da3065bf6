#!/usr/bin/env bash
# The fuzz targets in fuzz/ (libFuzzer through libfuzzer-sys).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]           by hand: cargo-fuzz,
#       nightly, AddressSanitizer (installs both when missing)
#   bash scripts/fuzz.sh --stable [SECONDS] [TARGET...]  bounded run on the
#       stable toolchain, no sanitizer (scripts/test.sh, step fuzz): the same
#       coverage instrumentation cargo-fuzz asks rustc for, with plain cargo,
#       so CI needs neither nightly nor a cargo-fuzz build (7 min here)
#
# SECONDS per target (default 300); targets default to all of them:
#   diff     applying diff(old, new) to old gives new (arbitrary JSON)
#   payload  any bytes from an outside writer: taken as a change set that
#            rebuilds them, or refused (last good copy kept, updates refused)
#   key      Key::new: a key that is its own text, or InvalidKey
#   urls     zk:// and etcd:// parsers and redact_url: no panic, no password shown
#   patch    the command's patches: merge patches idempotent, JSON Patches
#            apply or fail whole
# Corpora grow in fuzz/corpus/<target>, crashes land in
# fuzz/artifacts/<target> (both gitignored). Prints a table of targets,
# seconds, runs and result; exits non-zero when a target found a failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STABLE=0
if [[ "${1:-}" == "--stable" ]]; then
	STABLE=1
	shift
fi
SECONDS_PER_TARGET="${1:-300}"
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(diff payload key urls patch)

log() { printf '==> [fuzz.sh] %s\n' "$*" >&2; }

cd "$ROOT/fuzz" || exit 1
BUILD_LOG="$(mktemp)"
trap 'rm -f "$BUILD_LOG"' EXIT
if ((STABLE)); then
	# What cargo-fuzz passes to rustc for libFuzzer's coverage feedback, minus
	# the sanitizer (-Z flags need nightly). --target keeps the flags off
	# build scripts and proc macros.
	host="$(rustc -vV | sed -n 's/^host: //p')"
	export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
	# The dev profile without debug info: a release build of the targets and
	# their dependencies took 17 min on a loaded 2-core machine; a bounded
	# run needs coverage feedback, not speed.
	export CARGO_PROFILE_DEV_DEBUG=false
	log "building the targets (stable, dev profile, coverage instrumentation, no sanitizer)"
	start=$SECONDS
	if ! cargo build --bins --target "$host" --target-dir "$ROOT/target/fuzz-stable" >"$BUILD_LOG" 2>&1; then
		tail -n 30 "$BUILD_LOG" >&2
		exit 1
	fi
	log "built in $((SECONDS - start)) s"
	run_target() { # run_target TARGET: libFuzzer's own command line
		"$ROOT/target/fuzz-stable/$host/debug/$1" "corpus/$1" -artifact_prefix="artifacts/$1/" \
			-max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096 -print_final_stats=1
	}
else
	if ! rustup run nightly rustc --version >/dev/null 2>&1; then
		log "installing the nightly toolchain (rustup, minimal profile)"
		rustup toolchain install nightly --profile minimal || exit 1
	fi
	if ! cargo fuzz --version >/dev/null 2>&1; then
		log "installing cargo-fuzz (cargo install --locked)"
		start=$SECONDS
		cargo install cargo-fuzz --locked || exit 1
		log "cargo-fuzz installed in $((SECONDS - start)) s"
	fi
	log "building the targets (nightly, release, AddressSanitizer)"
	if ! cargo +nightly fuzz build -O >"$BUILD_LOG" 2>&1; then
		tail -n 30 "$BUILD_LOG" >&2
		exit 1
	fi
	run_target() {
		cargo +nightly fuzz run -O "$1" "corpus/$1" -- \
			-max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096 -print_final_stats=1
	}
fi
RESULTS=()
failed=0
for target in "${TARGETS[@]}"; do
	mkdir -p "corpus/$target" "artifacts/$target"
	out="$(mktemp)"
	log "$target: ${SECONDS_PER_TARGET} s"
	start=$SECONDS
	run_target "$target" >"$out" 2>&1
	rc=$?
	took=$((SECONDS - start))
	runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)"
	if ((rc == 0)); then
		result="no failure"
	else
		result="FAILED (exit $rc; see fuzz/artifacts/$target)"
		failed=1
		tail -n 40 "$out" >&2
	fi
	RESULTS+=("$(printf '%-8s %6s s %12s runs  %s' "$target" "$took" "${runs:-?}" "$result")")
	rm -f "$out"
done
printf '\n==> [fuzz.sh] results\n' >&2
printf '    %s\n' "${RESULTS[@]}" >&2
exit "$failed"
