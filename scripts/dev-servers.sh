#!/usr/bin/env bash
# Long-lived ZooKeeper and etcd containers for development, shared by every
# `cargo test` on this machine instead of one container per test binary:
#
#   bash scripts/dev-servers.sh up      # start (or keep) them, print the env
#   eval "$(bash scripts/dev-servers.sh env)"
#   cargo test -p sharedstate-zookeeper
#   bash scripts/dev-servers.sh down    # remove them
#
# They carry the label sharedstate.dev=1 (not sharedstate.test=1), so the
# cleanup in scripts/test.sh leaves them alone. Images: as scripts/test.sh
# picks them (SHAREDSTATE_ZOOKEEPER_IMAGE / SHAREDSTATE_ETCD_IMAGE, default
# the local images that scripts/build-test-images.sh builds). Ports:
# SHAREDSTATE_DEV_ZOOKEEPER_PORT (2181) and SHAREDSTATE_DEV_ETCD_PORT (2379)
# on 127.0.0.1. Same settings as the test fixtures (tickTime 500 ms).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZK_NAME=sharedstate-dev-zookeeper
ETCD_NAME=sharedstate-dev-etcd
ZK_PORT="${SHAREDSTATE_DEV_ZOOKEEPER_PORT:-2181}"
ETCD_PORT="${SHAREDSTATE_DEV_ETCD_PORT:-2379}"
ZK_IMAGE="${SHAREDSTATE_ZOOKEEPER_IMAGE:-sharedstate-test/zookeeper:local}"
ETCD_IMAGE="${SHAREDSTATE_ETCD_IMAGE:-sharedstate-test/etcd:local}"

log() { printf '[dev-servers] %s\n' "$*" >&2; }
running() { [[ "$(docker inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]; }

ruok() { # ruok PORT: whether ZooKeeper answers imok
	local answer
	answer="$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; printf ruok >&3; cat <&3" 2>/dev/null)" || true
	[[ "$answer" == imok ]]
}
etcd_healthy() { # etcd_healthy PORT
	local answer
	answer="$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; printf 'GET /health HTTP/1.0\r\n\r\n' >&3; cat <&3" 2>/dev/null)" || true
	[[ "$answer" == *'"health":"true"'* ]]
}
wait_for() { # wait_for WHAT CHECK PORT
	local _
	for _ in $(seq 1 240); do
		"$2" "$3" && return 0
		sleep 0.5
	done
	log "ERROR: $1 did not become ready on 127.0.0.1:$3 (docker logs $1)"
	return 1
}

up() {
	if [[ "$ZK_IMAGE" == sharedstate-test/* || "$ETCD_IMAGE" == sharedstate-test/* ]]; then
		bash "$ROOT/scripts/build-test-images.sh"
	fi
	if ! running "$ZK_NAME"; then
		docker rm -f "$ZK_NAME" >/dev/null 2>&1 || true
		docker run -d --name "$ZK_NAME" --label sharedstate.dev=1 \
			-p "127.0.0.1:$ZK_PORT:2181" --tmpfs /data --tmpfs /datalog \
			-e ZOO_TICK_TIME=500 -e 'ZOO_4LW_COMMANDS_WHITELIST=*' -e ZOO_ADMINSERVER_ENABLED=false \
			-e 'ZOO_CFG_EXTRA=forceSync=no maxSessionTimeout=60000' \
			-e 'JVMFLAGS=-Xmx256m -XX:+UseSerialGC' \
			"$ZK_IMAGE" >/dev/null
	fi
	if ! running "$ETCD_NAME"; then
		docker rm -f "$ETCD_NAME" >/dev/null 2>&1 || true
		docker run -d --name "$ETCD_NAME" --label sharedstate.dev=1 \
			-p "127.0.0.1:$ETCD_PORT:2379" --tmpfs /etcd-data:rw,mode=0700 \
			"$ETCD_IMAGE" /usr/local/bin/etcd --name sharedstate-dev --data-dir /etcd-data \
			--logger zap --listen-client-urls http://0.0.0.0:2379 \
			--advertise-client-urls http://0.0.0.0:2379 \
			--listen-peer-urls http://127.0.0.1:2380 \
			--initial-advertise-peer-urls http://127.0.0.1:2380 \
			--initial-cluster sharedstate-dev=http://127.0.0.1:2380 >/dev/null
	fi
	wait_for "$ZK_NAME" ruok "$ZK_PORT"
	wait_for "$ETCD_NAME" etcd_healthy "$ETCD_PORT"
	log "ready: ZooKeeper 127.0.0.1:$ZK_PORT ($ZK_NAME), etcd 127.0.0.1:$ETCD_PORT ($ETCD_NAME)"
	env_lines
}

env_lines() {
	echo "export SHAREDSTATE_TEST_ZOOKEEPER=127.0.0.1:$ZK_PORT SHAREDSTATE_TEST_ZOOKEEPER_CONTAINER=$ZK_NAME"
	echo "export SHAREDSTATE_TEST_ETCD=127.0.0.1:$ETCD_PORT SHAREDSTATE_TEST_ETCD_CONTAINER=$ETCD_NAME"
}

down() {
	docker rm -f "$ZK_NAME" "$ETCD_NAME" >/dev/null 2>&1 || true
	log "removed $ZK_NAME and $ETCD_NAME"
}

case "${1:-}" in
up) up ;;
env) env_lines ;;
down) down ;;
*)
	echo "usage: bash scripts/dev-servers.sh up|env|down" >&2
	exit 2
	;;
esac
