#!/usr/bin/env bash
# End-to-end pass against Debian's etcd-server (etcd 3.4, v2 API enabled),
# the version sites run: the production binary renders the example confdir
# and must produce exactly the golden files; the agent follows a change,
# rides out an etcd outage and a restart during it (serving from its
# cache), and converges when etcd returns; the mirror replicates every kind
# of write into a second etcd 3.4 and verify finds the trees equal; the
# gate serves that replica read-only over TLS, then lets an authorised
# user write, to curl and to etcdctl.
#
# Needs /usr/bin/etcd (apt-get install etcd-server), etcdctl, curl,
# htpasswd and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

ETCD=${ETCD:-/usr/bin/etcd}
[ -x "$ETCD" ] || { echo "e2e: $ETCD not found; apt-get install etcd-server" >&2; exit 1; }
WORK=$(mktemp -d /tmp/confsync-e2e.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[ -n "${KEEP_WORK:-}" ] && echo "e2e: kept $WORK" || rm -rf "$WORK"
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

# run_etcd NAME CLIENT_PORT PEER_PORT: start a one-member etcd 3.4 cluster.
run_etcd() {
	local name=$1 client=http://127.0.0.1:$2 peer=http://127.0.0.1:$3
	"$ETCD" --name "$name" --data-dir "$WORK/$name" --enable-v2=true \
		--listen-client-urls "$client" --advertise-client-urls "$client" \
		--listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
		--initial-cluster "$name=$peer" --initial-cluster-token "$name-token" >"$WORK/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
	wait_for "etcd $name at $client" curl -fsS "$client/v2/keys/"
}
CLIENT=$(free_port); PEER=$(free_port)
NODE=http://127.0.0.1:$CLIENT
start_etcd() { run_etcd e2e "$CLIENT" "$PEER"; ETCD_PID=$LAST_PID; }
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

echo "e2e: mirror every kind of write into a second etcd 3.4"
R_CLIENT=$(free_port); R_PEER=$(free_port)
REPLICA=http://127.0.0.1:$R_CLIENT
run_etcd replica "$R_CLIENT" "$R_PEER"
MIRROR_PORT=$(free_port)
"$WORK/confsync" mirror --reload --src-prefix / --dst-prefix / --port "$MIRROR_PORT" \
	--listen-address 127.0.0.1 --poll-timeout 2s "$NODE" "$REPLICA" 2>>"$WORK/mirror.log" &
PIDS+=("$!")
wait_for "the mirror to catch up" sh -c "test \"\$(curl -fsS http://127.0.0.1:$MIRROR_PORT/lag)\" = 0"
K="$NODE/v2/keys/e2e"
curl -fsS -XPUT "$K/set" -d value=a >/dev/null
curl -fsS -XPUT "$K/created?prevExist=false" -d value=b >/dev/null
curl -fsS -XPUT "$K/set?prevExist=true" -d value=updated >/dev/null
curl -fsS -XPUT "$K/created?prevValue=b" -d value=swapped >/dev/null
curl -fsS -XPUT "$K/empty" -d value= >/dev/null
curl -fsS -XPUT "$K/empty?prevValue=" -d value=was-empty >/dev/null 2>&1 || \
	curl -fsS -XPUT "$K/empty?prevIndex=$(curl -fsS "$K/empty" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["modifiedIndex"])')" -d value=was-empty >/dev/null
curl -fsS -XPUT "$K/dir/sub?dir=true" >/dev/null
curl -fsS -XPUT "$K/dir/leaf" -d value=x >/dev/null
curl -fsS -XPOST "$K/queue" -d value=first >/dev/null
curl -fsS -XPUT "$K/ttl?ttl=300" -d value=expires-later >/dev/null
curl -fsS -XPUT "$K/gone" -d value=x >/dev/null
curl -fsS -XDELETE "$K/gone?prevValue=x" >/dev/null
curl -fsS -XPUT "$K/deleted" -d value=x >/dev/null
curl -fsS -XDELETE "$K/deleted" >/dev/null
curl -fsS -XPUT "$NODE/v2/keys/conftool/v1/pools/eqiad/appserver/apache2/mw1102.eqiad.wmnet" \
	--data-urlencode 'value={"weight": 0, "pooled": "no"}' >/dev/null
wait_for "the mirror to apply the writes" sh -c "curl -sS $REPLICA/v2/keys/conftool/v1/pools/eqiad/appserver/apache2/mw1102.eqiad.wmnet | grep -q 'pooled.*no'"
"$WORK/confsync" mirror verify --src-prefix / --dst-prefix / "$NODE" "$REPLICA"
curl -fsS "http://127.0.0.1:$MIRROR_PORT/metrics" >"$WORK/metrics"
grep -q '^etcdmirror_replicated_events_total' "$WORK/metrics"
echo "e2e: mirror passed"

echo "e2e: gate in front of the replica, read-only over TLS, then writable"
mkdir -p "$WORK/pki" && go run ./internal/tools/pki "$WORK/pki" >/dev/null
htpasswd -bcm "$WORK/htpasswd" conftool secret 2>/dev/null
printf 'admins = ["root"]\n[[acl]]\nprefix = "/conftool"\nusers = ["conftool"]\n' >"$WORK/acl.toml"
touch "$WORK/read-only"
GATE=127.0.0.1:$(free_port)
"$WORK/confsync" gate -listen "$GATE" -upstream "$REPLICA" -tls-cert "$WORK/pki/server.pem" -tls-key "$WORK/pki/server-key.pem" \
	-htpasswd "$WORK/htpasswd" -acl "$WORK/acl.toml" -read-only-file "$WORK/read-only" -access-log off 2>>"$WORK/gate.log" &
PIDS+=("$!")
CURL=(curl -sS --cacert "$WORK/pki/ca.pem")
wait_for "the gate" "${CURL[@]}" -f "https://$GATE/v2/keys/conftool/v1/mediawiki-config/common/WMFMasterDatacenter"
code=$("${CURL[@]}" -o "$WORK/body" -w '%{http_code}' -u conftool:secret -XPUT "https://$GATE/v2/keys/conftool/x" -d value=y)
[ "$code" = 403 ] && grep -q '"errorCode":107' "$WORK/body" || { echo "e2e: read-only gate answered $code: $(cat "$WORK/body")" >&2; exit 1; }
rm "$WORK/read-only"
wait_for "the gate to become writable" sh -c "test \"\$(${CURL[*]} -o /dev/null -w '%{http_code}' -u conftool:secret -XPUT https://$GATE/v2/keys/conftool/x -d value=y)\" = 200"
code=$("${CURL[@]}" -o "$WORK/body" -w '%{http_code}' -XPUT "https://$GATE/v2/keys/conftool/x" -d value=anon)
[ "$code" = 401 ] && grep -q '"errorCode":110' "$WORK/body" || { echo "e2e: anonymous write answered $code" >&2; exit 1; }
code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -u conftool:secret -XPUT "https://$GATE/v2/keys/conftoolfoo/x" -d value=y)
[ "$code" = 401 ] || { echo "e2e: /conftoolfoo write answered $code" >&2; exit 1; }
if command -v etcdctl >/dev/null; then
	ETCDCTL_API=2 etcdctl --endpoints "https://$GATE" --ca-file "$WORK/pki/ca.pem" --username conftool:secret \
		set /conftool/from-etcdctl yes >/dev/null
	test "$(curl -fsS "$REPLICA/v2/keys/conftool/from-etcdctl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["value"])')" = yes
fi
echo "e2e: gate passed"
