#!/usr/bin/env bash
# Measures two server binaries side by side: bench/run.sh MODE against
# BASE, then against NEW, ROUNDS times in alternation, so that the noise of
# a shared machine falls on both alike. The load generator is LOADGEN
# (default ./baremetal_sd-bench, `make build-bench`).
# Usage (from the repository root):
#
#   bench/compare.sh BASE_BIN NEW_BIN register|heartbeat|scale [ROUNDS]
#
# A baseline binary is built from an older commit, for example:
#   git worktree add /tmp/base <commit> && (cd /tmp/base && go build -o baremetal_sd .)
set -euo pipefail

if (($# < 3)); then
  echo "usage: $0 BASE_BIN NEW_BIN register|heartbeat|scale [ROUNDS]" >&2
  exit 2
fi
base=$1 new=$2 mode=$3 rounds=${4:-3}
for i in $(seq 1 "${rounds}"); do
  for which in base new; do
    bin=${base}
    [[ ${which} == new ]] && bin=${new}
    printf '\n======== round %d: %s server (%s) ========\n' "${i}" "${which}" "${bin}"
    BIN="${new}" SERVER_BIN="${bin}" RUNS=1 PORT=$((39955 + i)) bench/run.sh "${mode}"
  done
done
