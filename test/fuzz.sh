#!/usr/bin/env bash
# Runs every Go fuzz target in the module for FUZZTIME each (default 5m).
# New crashers land in the package's testdata/fuzz/<Target>/ directory: fix
# the bug and commit the file, so that `make test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${1:-5m}"
failed=0
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target ($fuzztime)"
		if ! go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$pkg"; then
			failed=1
		fi
	done
done
exit "$failed"
