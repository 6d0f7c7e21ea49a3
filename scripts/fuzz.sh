#!/usr/bin/env bash
# Runs every Go fuzz target of the module, one after the other, each for
# DURATION (default 1m; anything -fuzztime takes: 10s, 5m, 100000x).
# Stops at the first failure and says how to reproduce it; the failing
# input is left in the package's testdata/fuzz/<target>/, where plain
# `go test` replays it from then on (commit it with the fix).
#
#   scripts/fuzz.sh            # 1m per target
#   scripts/fuzz.sh 10s        # what CI runs
#   FUZZ_PACKAGES=./gate scripts/fuzz.sh 5m   # only some packages
#   FUZZ_TIMEOUT=2h scripts/fuzz.sh 1h        # go test -timeout (default
#                                             # 20m) must exceed DURATION
#
# Targets are found with `go test -list` in the packages whose tests
# define a func Fuzz...; the seed corpora also run in every `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

duration=${1:-1m}
if [ $# -gt 1 ]; then
	echo "usage: scripts/fuzz.sh [duration]" >&2
	exit 2
fi

# The packages with a fuzz target: grep is cheap, go test -list builds.
mapfile -t packages < <(go list -f '{{.Dir}} {{.ImportPath}} {{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' ${FUZZ_PACKAGES:-./...} |
	while read -r dir pkg files; do
		[ -n "$files" ] || continue
		(cd "$dir" && grep -qE '^func Fuzz[A-Z0-9_]' $files) && echo "$pkg"
	done)
if ((${#packages[@]} == 0)); then
	echo "scripts/fuzz.sh: no fuzz targets found" >&2
	exit 1
fi

targets=()
for pkg in "${packages[@]}"; do
	list=$(go test -list '^Fuzz' "$pkg") || { echo "$list" >&2; exit 1; }
	for name in $(grep -E '^Fuzz[A-Za-z0-9_]*$' <<<"$list"); do
		targets+=("$pkg $name")
	done
done
echo "== fuzzing ${#targets[@]} targets for $duration each"
spurious=0

for target in "${targets[@]}"; do
	read -r pkg name <<<"$target"
	echo "== $name ($pkg)"
	log=$(mktemp)
	if ! go test -run '^$' -fuzz "^$name\$" -fuzztime "$duration" -timeout "${FUZZ_TIMEOUT:-20m}" "$pkg" 2>&1 | tee "$log"; then
		dir=$(go list -f '{{.Dir}}' "$pkg")
		input=$(grep -oE "Failing input written to testdata/fuzz/$name/[0-9a-f]+" "$log" | tail -n 1 || true)
		input=${input#Failing input written to }
		if [ -z "$input" ] && grep -qx '    context deadline exceeded' "$log"; then
			# Go 1.26's fuzzing coordinator can report its own -fuzztime
			# deadline as a failure (go.dev/issue/75804, fixed in Go 1.27).
			# A real failure always writes its input; this one wrote none.
			echo "scripts/fuzz.sh: $name: ignoring Go's spurious 'context deadline exceeded' at the end of -fuzztime (go.dev/issue/75804); no failing input was found" >&2
			rm -f "$log"
			spurious=$((spurious + 1))
			continue
		fi
		rm -f "$log"
		echo
		echo "scripts/fuzz.sh: $name in $pkg failed." >&2
		if [ -n "$input" ]; then
			echo "The failing input is $dir/$input; reproduce it with" >&2
			echo "  go test -run '^$name/${input##*/}\$' -v $pkg" >&2
			echo "Once fixed, commit that file: go test then replays it for good." >&2
		else
			echo "No input was saved (a build error, or the fuzzer itself failed); see the output above." >&2
		fi
		exit 1
	fi
	rm -f "$log"
done
echo "== all ${#targets[@]} fuzz targets passed ($duration each; $spurious ended by go.dev/issue/75804)"
