#!/usr/bin/env bash
# Mutation testing of the security-critical code with gremlins (pinned in
# tools/go.mod): each mutant (a flipped comparison, a boundary moved by one,
# && for ||, an arithmetic operator swapped, …) of code the package's tests
# cover is compiled and tested; a mutant the tests still pass on "LIVED".
# Slow — minutes per package on 2 cores — so not in CI: run it before a
# release and judge every survivor (docs/security.md lists the harmless ones).
#
#   test/mutate.sh                         # the default targets below
#   test/mutate.sh internal/extauthz       # one package
#   test/mutate.sh 'internal/policy:^input' # only files whose name matches
#
# MUTATE_WORKERS (default 1) sets gremlins' parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	targets=(
		'internal/identity'
		'internal/revocation'
		'internal/decisionlog:^verify'
		'internal/extauthz'
		'internal/policy:^input'
	)
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
for t in "${targets[@]}"; do
	dir=${t%%:*}
	only=""
	[[ $t == *:* ]] && only=${t#*:}
	# gremlins also walks subdirectories (other packages below the
	# target): only the package itself is mutated.
	excludes=(-E '/')
	if [ -n "$only" ]; then
		for f in "$dir"/*.go; do
			name=$(basename "$f")
			[[ $name == *_test.go ]] && continue
			grep -Eq "$only" <<<"$name" || excludes+=(-E "(^|/)${name//./\\.}\$")
		done
	fi
	echo "== $t"
	log="$out/$(tr / _ <<<"$dir").log"
	if ! go tool -modfile=tools/go.mod gremlins unleash --workers "${MUTATE_WORKERS:-1}" --test-cpu 1 \
		--timeout-coefficient 5 --invert-logical "${excludes[@]}" "./$dir" 2>&1 | tee "$log"; then
		echo "== $t: gremlins failed" >&2
		failed=1
	fi
	sed -n "s|^ *LIVED \(.*\) at \(.*\)$|$dir/\2 \1|p" "$log" >>"$out/lived"
done
echo
if [ -s "$out/lived" ]; then
	echo "Surviving mutants (judge each; docs/security.md lists those found harmless):"
	sort "$out/lived"
else
	echo "No surviving mutants."
fi
if [ "$failed" -ne 0 ]; then
	echo "gremlins failed on some targets (above): their mutants were not tested." >&2
fi
exit "$failed"
