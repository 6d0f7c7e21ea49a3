#!/usr/bin/env bash
# The Debian package's whole life on this machine, as CI runs it: build
# (scripts/deb.sh), lintian without errors, dpkg -i, the installed binary,
# manual pages, completion and units, nothing started, then dpkg -r and
# dpkg -P leaving nothing behind. Needs root (dpkg -i), lintian, man-db and
# systemd (systemd-analyze); systemd need not be running.
#
#   scripts/deb-check.sh            # builds the package first
#   scripts/deb-check.sh FILE.deb   # checks a package already built
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "deb-check: run as root (dpkg -i)" >&2; exit 1; }
if dpkg -s confsync >/dev/null 2>&1; then
	echo "deb-check: confsync is already installed here; remove it first (dpkg -P confsync)" >&2
	exit 1
fi

deb=${1:-$(scripts/deb.sh | tail -1)}
fail() { echo "deb-check: $*" >&2; exit 1; }
version=$(dpkg-deb -f "$deb" Version)
echo "deb-check: $deb"

echo "deb-check: lintian"
if ! report=$(lintian --fail-on error --display-info --pedantic "$deb" 2>&1); then
	echo "$report"
	fail "lintian reports errors"
fi
echo "$report" | grep -v 'running with root privileges' || true

echo "deb-check: install"
dpkg -i "$deb"
trap 'dpkg -P confsync >/dev/null 2>&1 || true' EXIT

installed=$(/usr/bin/confsync version)
echo "$installed"
[ "${installed%%$'\n'*}" = "confsync $version" ] || fail "confsync version does not report $version"
[[ $installed =~ revision\ +[0-9a-f]{40} ]] || echo "deb-check: note: built without VCS information"
/usr/bin/confsync help agent >/dev/null

pages=(confsync)
for c in $(/usr/bin/confsync help | awk '/^Commands:/ {on=1; next} on && /^$/ {exit} on {print $1}'); do
	pages+=("confsync-$c")
done
for page in "${pages[@]}"; do
	file=$(man -w "$page") || fail "no manual page $page"
	[ -n "$(man --warnings -l "$file" 2>&1 >/dev/null)" ] && fail "man $page warns"
	[[ $(man "$page") == *$'\n'NAME$'\n'* ]] || fail "man $page shows no NAME"
done
echo "deb-check: manual pages ${pages[*]}"
bash -c 'source /usr/share/bash-completion/completions/confsync && complete -p confsync' >/dev/null ||
	fail "bash completion does not load"

getent passwd confsync >/dev/null || fail "no confsync user"
[ "$(stat -c %U /var/lib/confsync)" = root ] || fail "/var/lib/confsync not owned by root"
[ "$(stat -c %U:%a /var/lib/confsync-relay)" = confsync:750 ] || fail "/var/lib/confsync-relay"
[ "$(stat -c %U:%a /var/log/confsync)" = confsync:750 ] || fail "/var/log/confsync"
[ "$(stat -c %G:%a /etc/confsync)" = confsync:750 ] || fail "/etc/confsync"
for unit in /lib/systemd/system/confsync-*.service; do
	out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $out"
	[ -z "$out" ] || fail "systemd-analyze verify $unit: $out"
done
echo "deb-check: units verify"
if ls /etc/systemd/system/*.wants/confsync-* >/dev/null 2>&1; then
	fail "a unit was enabled by the install"
fi
for exe in /proc/[0-9]*/exe; do
	[ "$(readlink "$exe" 2>/dev/null)" != /usr/bin/confsync ] || fail "a daemon runs after the install: ${exe%/exe}"
done

echo "deb-check: remove"
dpkg -r confsync
[ ! -e /usr/bin/confsync ] || fail "/usr/bin/confsync left after dpkg -r"
[ -e /etc/default/confsync-agent ] || fail "conffiles removed by dpkg -r (only purge removes them)"
echo "deb-check: purge"
dpkg -P confsync
trap - EXIT
for left in /etc/default/confsync-agent /var/lib/confsync /var/lib/confsync-relay /var/log/confsync /etc/confsync \
	/usr/share/doc/confsync /lib/systemd/system/confsync-agent.service; do
	[ ! -e "$left" ] || fail "$left left after dpkg -P"
done
if dpkg -s confsync >/dev/null 2>&1; then fail "dpkg still knows confsync"; fi
echo "deb-check: passed"
