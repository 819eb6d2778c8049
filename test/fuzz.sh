#!/usr/bin/env bash
# Runs every Go fuzz target in the module for FUZZTIME each (default 5m).
# New crashers land in the package's testdata/fuzz/<Target>/ directory: fix
# the bug and commit the file, so that `make test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${1:-5m}"
failed=0
for pkg in $(go list ./...); do
	# A package whose tests do not build is a failure, not a package without
	# fuzz targets: it would otherwise be silently left out.
	if ! list=$(go test -list '^Fuzz' "$pkg"); then
		echo "== $pkg: the tests do not build; not fuzzed" >&2
		failed=1
		continue
	fi
	for target in $(grep '^Fuzz' <<<"$list" || true); do
		echo "== $pkg $target ($fuzztime)"
		if ! go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$pkg"; then
			failed=1
		fi
	done
done
exit "$failed"
