#!/usr/bin/env bash
# Builds the local test images used when no container registry is reachable:
#
#   sharedstate-test/base:bookworm    Debian bookworm rootfs (mmdebstrap) with
#                                     zookeeper, default-jre-headless,
#                                     etcd-server and etcd-client, `docker import`ed
#   sharedstate-test/zookeeper:local  FROM base; entrypoint compatible with the
#                                     official `zookeeper` image (ZOO_* variables)
#   sharedstate-test/etcd:local       FROM base; etcd/etcdctl at /usr/local/bin
#                                     like the official etcd image
#
# An image that exists and was built from the same recipe (label
# sharedstate.recipe: the package list for the base, a hash of the build
# context and of the base for the others) is skipped; SHAREDSTATE_REBUILD_IMAGES=1
# rebuilds all three. Needs root, a Docker daemon and mmdebstrap; scripts/test.sh
# installs and starts them. Prints the image names and timings.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${SHAREDSTATE_BASE_IMAGE_LOCAL:-sharedstate-test/base:bookworm}"
ZK_IMAGE="${SHAREDSTATE_ZOOKEEPER_IMAGE_LOCAL:-sharedstate-test/zookeeper:local}"
ETCD_IMAGE="${SHAREDSTATE_ETCD_IMAGE_LOCAL:-sharedstate-test/etcd:local}"
SUITE=bookworm
MIRROR="${SHAREDSTATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SHAREDSTATE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PACKAGES=zookeeper,default-jre-headless,etcd-server,etcd-client
CACHE_DIR="${SHAREDSTATE_IMAGE_CACHE:-$ROOT/scripts/.cache}" # gitignored
# The legacy builder: works with Debian's docker.io and a newer CLI alike,
# without needing the buildx plugin.
export DOCKER_BUILDKIT=0

log() { printf '[build-test-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
TIMINGS=()
timed() { # timed LABEL CMD...: runs CMD, records its duration
	local label="$1" start end
	shift
	start="$(now)"
	"$@"
	end="$(now)"
	TIMINGS+=("$(awk -v l="$label" -v s="$start" -v e="$end" 'BEGIN { printf "%-28s %7.1f s", l, e - s }')")
}
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
# The recipe an image was built from (label sharedstate.recipe): an image
# whose recipe changed since is rebuilt.
image_recipe() { docker image inspect --format '{{index .Config.Labels "sharedstate.recipe"}}' "$1" 2>/dev/null; }
context_recipe() { # hash of a build context's files and of the base image's id
	(
		cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum
		docker image inspect --format '{{.Id}}' "$BASE_IMAGE"
	) | sha256sum | cut -c1-16
}

command -v docker >/dev/null || die "docker CLI not found (run: bash scripts/test.sh, which installs it)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers (run: bash scripts/test.sh, which starts one)"

# One build at a time on this machine (two test runs starting together wait
# for each other instead of running mmdebstrap twice).
LOCK_FILE=/tmp/sharedstate-build-test-images.lock
exec 9>"$LOCK_FILE"
if command -v flock >/dev/null && ! flock -n 9; then
	log "another build holds $LOCK_FILE; waiting for it (at most 20 min)"
	flock -w 1200 9 || die "timed out waiting for $LOCK_FILE"
fi

if [[ "${SHAREDSTATE_REBUILD_IMAGES:-0}" == 1 ]]; then
	for image in "$ZK_IMAGE" "$ETCD_IMAGE" "$BASE_IMAGE"; do
		docker image rm -f "$image" >/dev/null 2>&1 || true
	done
fi

build_rootfs() {
	command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap)"
	mkdir -p "$CACHE_DIR"
	# Man pages and docs are kept: openjdk's postinst needs them.
	# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
	mmdebstrap --variant=apt --include="$PACKAGES" \
		--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
		"$SUITE" "$ROOTFS" \
		"deb $MIRROR $SUITE main" \
		"deb $MIRROR $SUITE-updates main" \
		"deb $SECURITY_MIRROR $SUITE-security main"
}

BASE_RECIPE="$(printf '%s\n' "$SUITE" "$PACKAGES" "$MIRROR" "$SECURITY_MIRROR" | sha256sum | cut -c1-16)"

import_rootfs() {
	docker import \
		--change "LABEL sharedstate.recipe=$BASE_RECIPE" \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV LANG=C.UTF-8' \
		--change 'CMD ["/bin/bash"]' \
		--message "sharedstate test base: mmdebstrap $SUITE + $PACKAGES" \
		"$ROOTFS" "$BASE_IMAGE" >/dev/null
}

build_image() { # build_image TAG CONTEXT RECIPE
	docker build --quiet --build-arg "BASE=$BASE_IMAGE" --label "sharedstate.recipe=$3" \
		-t "$1" "$2" >/dev/null
}

if image_exists "$BASE_IMAGE" && [[ "$(image_recipe "$BASE_IMAGE")" == "$BASE_RECIPE" ]]; then
	log "$BASE_IMAGE exists, skipped"
else
	ROOTFS="$CACHE_DIR/rootfs-$SUITE-$$.tar"
	trap 'rm -f "$ROOTFS"' EXIT
	log "building the $SUITE rootfs with mmdebstrap ($PACKAGES); takes a few minutes"
	timed "rootfs (mmdebstrap)" build_rootfs
	log "rootfs: $(du -h "$ROOTFS" | cut -f1)"
	timed "docker import" import_rootfs
	rm -f "$ROOTFS"
fi

for pair in "$ZK_IMAGE=zookeeper" "$ETCD_IMAGE=etcd"; do
	image="${pair%%=*}"
	context="$ROOT/scripts/docker/${pair#*=}"
	recipe="$(context_recipe "$context")"
	if image_exists "$image" && [[ "$(image_recipe "$image")" == "$recipe" ]]; then
		log "$image exists, skipped"
	else
		log "building $image from $context"
		timed "docker build ${pair#*=}" build_image "$image" "$context" "$recipe"
	fi
done

log "images: $BASE_IMAGE $ZK_IMAGE $ETCD_IMAGE"
if ((${#TIMINGS[@]})); then
	log "timings:"
	for t in "${TIMINGS[@]}"; do log "  $t"; done
fi
