#!/usr/bin/env bash
# End-to-end pass against Debian's etcd-server (etcd 3.4, v2 API enabled),
# the version sites run: the production binary renders the example confdir
# and must produce exactly the golden files; then the agent follows a
# change, rides out an etcd outage and a restart during it (serving from
# its cache), and converges when etcd returns.
#
# Needs /usr/bin/etcd (apt-get install etcd-server) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

ETCD=${ETCD:-/usr/bin/etcd}
[ -x "$ETCD" ] || { echo "e2e: $ETCD not found; apt-get install etcd-server" >&2; exit 1; }
WORK=$(mktemp -d /tmp/confsync-e2e.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
	ruby -e 'require "socket"; puts TCPServer.new("127.0.0.1",0).addr[1]'; }
wait_for() { # wait_for DESCRIPTION COMMAND...
	local what=$1; shift
	for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
	echo "e2e: timed out waiting for $what" >&2
	return 1
}

CLIENT=$(free_port); PEER=$(free_port)
NODE=http://127.0.0.1:$CLIENT
start_etcd() {
	"$ETCD" --name e2e --data-dir "$WORK/etcd" --enable-v2=true \
		--listen-client-urls "$NODE" --advertise-client-urls "$NODE" \
		--listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
		--initial-cluster "e2e=http://127.0.0.1:$PEER" >"$WORK/etcd.log" 2>&1 &
	ETCD_PID=$!
	PIDS+=("$ETCD_PID")
	wait_for "etcd at $NODE" curl -fsS "$NODE/v2/keys/"
}
start_etcd
echo "e2e: $("$ETCD" --version | head -1) serving v2 at $NODE"

go build -o "$WORK/confsync" ./cmd/confsync
go run ./internal/tools/fixture -node "$NODE" -seed 1

echo "e2e: render the example confdir and compare with the golden files"
"$WORK/confsync" render -confdir . -node "$NODE" -dest-root "$WORK/render" -log-level warn
diff -r cmd/confsync/testdata/example "$WORK/render"
echo "e2e: render matches the golden files"

echo "e2e: agent follows a change"
METRICS=127.0.0.1:$(free_port)
start_agent() {
	"$WORK/confsync" agent -confdir . -node "$NODE" -dest-root "$WORK/agent" -state-dir "$WORK/state" \
		-metrics-addr "$METRICS" -log-level warn 2>>"$WORK/agent.log" &
	AGENT_PID=$!
	PIDS+=("$AGENT_PID")
}
start_agent
wait_for "agent readiness" curl -fsS "http://$METRICS/readyz"
diff -r cmd/confsync/testdata/example "$WORK/agent"
POOL="$WORK/agent/srv/config-master/pybal/eqiad/appservers-https"
curl -fsS -XPUT "$NODE/v2/keys/conftool/v1/pools/eqiad/appserver/apache2/mw1101.eqiad.wmnet" \
	--data-urlencode 'value={"weight": 10, "pooled": "yes"}' >/dev/null
wait_for "the depooled host to come back" grep -q "'host': 'mw1101.eqiad.wmnet', 'weight':10, 'enabled': True" "$POOL"
"$WORK/confsync" check -url "http://$METRICS/status"

echo "e2e: etcd goes away; files stay; staleness shows"
kill "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true
wait_for "backend down in /status" sh -c "curl -fsS http://$METRICS/status | grep -q '\"backend_up\": false'"
grep -q "mw1101.eqiad.wmnet', 'weight':10, 'enabled': True" "$POOL"

echo "e2e: agent restarts while etcd is away; every file comes from the cache"
kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
rm -rf "$WORK/agent"
start_agent
wait_for "agent readiness from cache" curl -fsS "http://$METRICS/readyz"
test "$(find "$WORK/agent" -type f | wc -l)" = "$(find cmd/confsync/testdata/example -type f | wc -l)"
grep -q "mw1101.eqiad.wmnet', 'weight':10, 'enabled': True" "$POOL"
wait_for "check to report the stale data" sh -c "! '$WORK/confsync' check -url http://$METRICS/status -warn-age 1s"
"$WORK/confsync" check -url "http://$METRICS/status" -warn-age 1s || true

echo "e2e: etcd returns; the agent converges without a restart"
start_etcd
curl -fsS -XPUT "$NODE/v2/keys/conftool/v1/discovery/appservers-rw/codfw" \
	--data-urlencode 'value={"pooled": true, "references": [], "ttl": 300}' >/dev/null
curl -fsS -XPUT "$NODE/v2/keys/conftool/v1/discovery/appservers-rw/eqiad" \
	--data-urlencode 'value={"pooled": false, "references": [], "ttl": 300}' >/dev/null
wait_for "the discovery flip" grep -q "10.2.1.1 => UP/300" "$WORK/agent/var/lib/gdnsd/discovery-appservers-rw.state"
wait_for "backend up again" sh -c "curl -fsS http://$METRICS/status | grep -q '\"backend_up\": true'"
"$WORK/confsync" check -url "http://$METRICS/status"
echo "e2e: agent passed"
