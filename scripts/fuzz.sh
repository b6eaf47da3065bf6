#!/usr/bin/env bash
# The fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, nightly) for a longer run
# by hand; scripts/test.sh runs the property tests instead (step fuzz, stable).
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 300); targets default to all of them:
#   diff     applying diff(old, new) to old gives new (arbitrary JSON)
#   payload  any bytes from an outside writer: taken as a change set that
#            rebuilds them, or refused (last good copy kept, updates refused)
#   key      Key::new: a key that is its own text, or InvalidKey
#   urls     zk:// and etcd:// parsers and redact_url: no panic, no password shown
#   patch    the command's patches: merge patches idempotent, JSON Patches
#            apply or fail whole
# Installs the nightly toolchain and cargo-fuzz (cargo install --locked) when
# missing. Corpora grow in fuzz/corpus/<target>, crashes land in
# fuzz/artifacts/<target> (both gitignored). Prints a table of targets,
# seconds, runs and result; exits non-zero when a target found a failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-300}"
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(diff payload key urls patch)

log() { printf '==> [fuzz.sh] %s\n' "$*" >&2; }

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

cd "$ROOT/fuzz" || exit 1
log "building the targets (release, sanitizer)"
if ! cargo +nightly fuzz build -O >/tmp/sharedstate-fuzz-build.log 2>&1; then
	tail -n 30 /tmp/sharedstate-fuzz-build.log >&2
	exit 1
fi
RESULTS=()
failed=0
for target in "${TARGETS[@]}"; do
	mkdir -p "corpus/$target"
	out="$(mktemp)"
	log "$target: ${SECONDS_PER_TARGET} s"
	start=$SECONDS
	cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
		-max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096 -print_final_stats=1 >"$out" 2>&1
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
