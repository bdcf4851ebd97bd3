#!/usr/bin/env bash
# `make test`: everything a change has to pass, in one command.
#   1. scripts/install-test-deps.sh (Debian packages for the e2e tests)
#   2. make check_license (a license header on every Go file)
#   3. go vet ./...
#   4. go test -race -count=1 ./... (unit and end-to-end tests; ./e2e builds
#      the binary itself)
#   5. scripts/fuzz.sh (each fuzz target for FUZZTIME)
# Every step after 1 runs even when an earlier one failed, so one run reports
# all problems; the exit code is non-zero if any step failed.
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-5s}
GOTEST_TIMEOUT=${GOTEST_TIMEOUT:-20m}
export GO FUZZTIME

start=$SECONDS
log=$(mktemp)
trap 'rm -f "$log"' EXIT

scripts/install-test-deps.sh

license=ok
make --no-print-directory check_license || license=FAIL

echo ">> go vet"
vet=ok
"$GO" vet ./... || vet=FAIL

echo ">> go test -race (unit and end-to-end)"
gotest=ok
"$GO" test -race -count=1 -timeout "$GOTEST_TIMEOUT" ./... 2>&1 | tee "$log" || gotest=FAIL
pkg_ok=$(grep -cE '^ok[[:space:]]' "$log" || true)
pkg_fail=$(grep -cE '^FAIL[[:space:]]' "$log" || true)
pkg_none=$(grep -cE '^\?[[:space:]].*\[no test files\]' "$log" || true)
# A build failure or a panic can fail the run without a "FAIL <pkg>" line.
if [[ $gotest == FAIL && $pkg_fail -eq 0 ]]; then
	pkg_fail=1
fi

echo ">> fuzz (${FUZZTIME} per target)"
fuzz=ok
scripts/fuzz.sh 2>&1 | tee "$log" || fuzz=FAIL
fuzz_line=$(grep -E '^fuzz: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)
fuzz_ok=$(sed -nE 's/^fuzz: ([0-9]+) passed.*/\1/p' <<<"$fuzz_line")
fuzz_fail=$(sed -nE 's/.* ([0-9]+) failed$/\1/p' <<<"$fuzz_line")
fuzz_ok=${fuzz_ok:-0}
fuzz_fail=${fuzz_fail:-0}
if [[ $fuzz == FAIL && $fuzz_fail -eq 0 ]]; then
	fuzz_fail=1
fi

vet_fail=0
[[ $vet == ok ]] || vet_fail=1
license_fail=0
[[ $license == ok ]] || license_fail=1

echo
echo ">> summary ($((SECONDS - start))s)"
echo "   license:        $license"
echo "   go vet:         $vet"
echo "   go test -race:  $gotest ($pkg_ok packages passed, $pkg_fail failed, $pkg_none without tests)"
echo "   fuzz:           $fuzz ($fuzz_ok targets passed, $fuzz_fail failed, ${FUZZTIME} each)"
echo "   (counted below: each tested package and each fuzz target; a go vet or license failure counts as one failure)"
echo "tests: $((pkg_ok + fuzz_ok)) passed, $((license_fail + vet_fail + pkg_fail + fuzz_fail)) failed"

[[ $license == ok && $vet == ok && $gotest == ok && $fuzz == ok ]]
