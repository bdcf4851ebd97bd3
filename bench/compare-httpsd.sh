#!/usr/bin/env bash
# Measures http_sd with 100,000 agents on two server binaries running at the
# same time, each on its own copy of one populated registry, alternating
# `bench httpsd` between them ROUNDS times, so that a slow moment of a shared
# machine falls on both. Prints the medians of each round's medians and their
# ratio. Usage (from the repository root):
#
#   bench/compare-httpsd.sh BASE_BIN NEW_BIN [ROUNDS]
#
# The load generator is LOADGEN (default ./baremetal_sd-bench, `make
# build-bench`). Environment: AGENTS (default 100000),
# BASE_PORT (default 39971; uses two ports), KEEP=1 keeps the directories.
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 BASE_BIN NEW_BIN [ROUNDS]" >&2
  exit 2
fi
base=$1 new=$2 rounds=${3:-5}
agents=${AGENTS:-100000}
loadgen=${LOADGEN:-./baremetal_sd-bench}
port0=${BASE_PORT:-39971}
work=$(mktemp -d "${TMPDIR:-/tmp}/baremetal_sd-httpsd.XXXXXX")
pids=()

cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill -TERM "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
  done
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "${work}"; else echo "kept ${work}"; fi
}
trap cleanup EXIT

# start BIN DIR PORT: starts a server and waits (bounded) until it is ready;
# its PID is appended to pids.
start() {
  "$1" server --data.dir="$2" --web.listen-address="127.0.0.1:$3" --log.level=warn &
  pids+=($!)
  for _ in $(seq 1 600); do
    if [[ -f "$2/ca.crt" ]] && curl -sf --cacert "$2/ca.crt" "https://127.0.0.1:$3/-/ready" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "server $1 not ready after 60s" >&2
  return 1
}

# A first start creates the CA, token key and registry; then populate it
# and give each server its own copy.
start "${new}" "${work}/base" "${port0}"
kill -TERM "${pids[0]}" && wait "${pids[0]}" 2>/dev/null || true
pids=()
"${loadgen}" populate --data.dir="${work}/base" --count="${agents}" >/dev/null
cp -a "${work}/base" "${work}/new"
start "${base}" "${work}/base" "${port0}"
start "${new}" "${work}/new" "$((port0 + 1))"

out="${work}/results"
for i in $(seq 1 "${rounds}"); do
  for which in base new; do
    port=${port0} pid=${pids[0]}
    [[ ${which} == new ]] && port=$((port0 + 1)) pid=${pids[1]}
    printf '\n======== round %d: %s server ========\n' "${i}" "${which}"
    "${loadgen}" httpsd --server.url="https://127.0.0.1:${port}" --data.dir="${work}/${which}" \
      --server.pid="${pid}" --count=40 --changes=5 --first=$((5000000 + i * 10000 + port)) |
      tee -a "${out}.${which}" | grep -E 'cached|after change'
  done
done

# One line per measurement: the median over the rounds of each round's median.
printf '\n======== medians over %d rounds ========\n' "${rounds}"
for what in 'cached identity' 'cached gzip' 'after change identity' 'after change gzip'; do
  b=$(grep "${what}" "${out}.base" | sed -E 's/^[^(]*median ([0-9.]+) ms.*/\1/' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  n=$(grep "${what}" "${out}.new" | sed -E 's/^[^(]*median ([0-9.]+) ms.*/\1/' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  awk -v w="${what}" -v b="${b}" -v n="${n}" 'BEGIN { printf "  %-22s base %8.3f ms  new %8.3f ms  new/base %.2f\n", w, b, n, n / b }'
done
