#!/usr/bin/env bash
# Runs every test, with the race detector. On a fresh Debian machine, run
# as root, it first installs the few programs some tests call: patch(1)
# (the diff test applies confsync's diffs with it), etcdctl (the gate is
# tested with the real v2 client) and etcd-server (Debian's etcd 3.4, which
# internal/etcdtest runs as child processes where a separate process
# matters: SIGKILL, SIGSTOP, watcher counts) and python3-etcd (the relay is
# tested with the real Python client). Most tests start etcd
# in-process. Tests against etcd 3.6 build it from internal/etcd36 with the
# go command on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

missing=()
command -v patch >/dev/null || missing+=(patch)
command -v etcdctl >/dev/null || missing+=(etcd-client)
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import etcd' 2>/dev/null || missing+=(python3-etcd)
if ((${#missing[@]})); then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	else
		echo "scripts/test.sh: missing ${missing[*]} (Debian packages); tests that need them will fail or skip" >&2
	fi
fi
go test -race -timeout 45m "$@" ./...
