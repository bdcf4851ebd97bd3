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
# When a worker finds new coverage, go test minimizes that input before it
# fuzzes on, for up to a minute by default. The relay's targets run the whole
# pipeline 36 times per input, so a short run would spend all its time
# minimizing one input (seen: 15 inputs in 5s instead of thousands).
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-1s}

# fuzz_one runs one target. Go's fuzzing engine sometimes ends a run with
# "context deadline exceeded" when the time is up while a worker is busy on
# a slow input, without any failing input; such a run is repeated once, and
# only a run that fails otherwise (or twice that way) counts as a failure.
fuzz_one() {
	local pkg=$1 target=$2 out attempt
	for attempt in 1 2; do
		out=$(mktemp)
		if "$GO" test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" -fuzzminimizetime="$FUZZMINIMIZETIME" "$pkg" 2>&1 | tee "$out"; then
			rm -f "$out"
			return 0
		fi
		if grep -q 'context deadline exceeded' "$out" && ! grep -q 'Failing input written to' "$out" && ((attempt == 1)); then
			echo ">> $target: fuzzing engine deadline race, no failing input; running it again"
			rm -f "$out"
			continue
		fi
		rm -f "$out"
		return 1
	done
	return 1
}

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
		if fuzz_one "$pkg" "$target"; then
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
