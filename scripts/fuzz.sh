#!/usr/bin/env bash
# Runs every fuzz target (func FuzzXxx in a _test.go file) of the module for
# FUZZTIME each (default 5s). `go test -fuzz` accepts one target in one
# package at a time, so targets are found with grep and run one by one.
# New failing inputs are kept under the package's testdata/fuzz/ by go test;
# commit them as regression cases.
#
# Prints one line per target and, last, "fuzz: N passed, M failed".
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-5s}

passed=0
failed=0
failures=()

# go list names only the module's own packages (no tools/, testdata/, vendor).
while IFS= read -r dir; do
	[[ -n "$dir" ]] || continue
	targets=$(grep -hoE '^func Fuzz[A-Za-z0-9_]*\(' "$dir"/*_test.go 2>/dev/null |
		sed -e 's/^func //' -e 's/($//' | sort -u || true)
	pkg=./${dir#"$PWD"/}
	[[ "$dir" == "$PWD" ]] && pkg=.
	for target in $targets; do
		echo ">> fuzzing $pkg $target for $FUZZTIME"
		if "$GO" test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg"; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			failures+=("$pkg $target")
		fi
	done
done < <("$GO" list -e -f '{{.Dir}}' ./...)

for f in ${failures[@]+"${failures[@]}"}; do
	echo "FAIL fuzz target: $f"
done
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
