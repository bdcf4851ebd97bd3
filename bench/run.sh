#!/usr/bin/env bash
# Reruns the end-to-end measurements of BENCHMARKS.md against fresh servers on
# 127.0.0.1 and prints every result table. Usage (from the repository root):
#
#   make build build-bench && bench/run.sh [register|heartbeat|scale|all]
#
# Environment: BIN (default ./baremetal_sd), SERVER_BIN (the server under
# test, default BIN), LOADGEN (the load generator, default
# ./baremetal_sd-bench), RUNS (repetitions,
# default 5), PORT (default 39955), KEEP=1 keeps the temporary data
# directories. bench/compare.sh runs two servers against each other.
set -euo pipefail

BIN=${BIN:-./baremetal_sd}
SERVER_BIN=${SERVER_BIN:-${BIN}}
LOADGEN=${LOADGEN:-./baremetal_sd-bench}
RUNS=${RUNS:-5}
PORT=${PORT:-39955}
URL="https://127.0.0.1:${PORT}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/baremetal_sd-bench.XXXXXX")
SERVER_PID=""

cleanup() {
  stop_server
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "${WORK}"; else echo "kept ${WORK}"; fi
}
trap cleanup EXIT

bench() { "${LOADGEN}" "$@"; }

# start_server DATA_DIR: starts the server and waits (bounded) until ready.
start_server() {
  "${SERVER_BIN}" server --data.dir="$1" --web.listen-address="127.0.0.1:${PORT}" --log.level=warn &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    if [[ -f "$1/ca.crt" ]] && curl -sf --cacert "$1/ca.crt" "${URL}/-/ready" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "${SERVER_PID}" 2>/dev/null; then
      echo "server exited during start-up" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "server not ready after 60s" >&2
  return 1
}

stop_server() {
  if [[ -n "${SERVER_PID}" ]]; then
    kill -TERM "${SERVER_PID}" 2>/dev/null || true
    wait "${SERVER_PID}" 2>/dev/null || true
    SERVER_PID=""
  fi
}

header() { printf '\n### %s (load average: %s)\n' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)"; }

run_register() {
  local data="${WORK}/register"
  start_server "${data}"
  for i in $(seq 1 "${RUNS}"); do
    header "register, new TLS connection each, run ${i}"
    bench register --server.url="${URL}" --data.dir="${data}" --server.pid="${SERVER_PID}" --count=5000 --concurrency=64 --first=$((i * 100000))
    header "register, keys pre-generated, run ${i}"
    bench register --server.url="${URL}" --data.dir="${data}" --server.pid="${SERVER_PID}" --count=5000 --concurrency=64 --pregenerate --first=$((i * 100000 + 10000))
    header "register, keep-alive, run ${i}"
    bench register --server.url="${URL}" --data.dir="${data}" --server.pid="${SERVER_PID}" --count=5000 --concurrency=64 --keep-alive --first=$((i * 100000 + 20000))
  done
  stop_server
}

run_heartbeat() {
  local data="${WORK}/heartbeat"
  start_server "${data}"
  # 32 workers keep the two cores busy; 64 show what queueing adds to the
  # latency.
  for i in $(seq 1 "${RUNS}"); do
    for workers in 32 64; do
      header "heartbeat, ${workers} workers, run ${i}"
      bench heartbeat --server.url="${URL}" --data.dir="${data}" --server.pid="${SERVER_PID}" --agents=256 --concurrency="${workers}" --duration=20s --first=$((1000000 + i * 1000 + workers))
    done
  done
  stop_server
}

run_scale() {
  local data="${WORK}/scale"
  # A first start creates the CA, the token key and an empty registry.
  start_server "${data}"
  stop_server
  header "populate 100,000 agents"
  bench populate --data.dir="${data}" --count=100000
  local t0 t1
  t0=$(date +%s%N)
  start_server "${data}"
  t1=$(date +%s%N)
  echo "server start with 100,000 agents until ready: $(((t1 - t0) / 1000000)) ms"
  for i in $(seq 1 "${RUNS}"); do
    header "httpsd with 100,000 agents, run ${i}"
    bench httpsd --server.url="${URL}" --data.dir="${data}" --server.pid="${SERVER_PID}" --count=20 --changes=20 --first=$((2000000 + i * 1000))
  done
  # Memory while the server works: heartbeats at full speed, then http_sd
  # once more, whose table ends with the server's RSS.
  header "heartbeats against 100,000 agents"
  bench heartbeat --server.url="${URL}" --data.dir="${data}" --server.pid="${SERVER_PID}" --agents=256 --concurrency=64 --duration=20s --first=3000000
  header "httpsd with 100,000 agents after the heartbeats"
  bench httpsd --server.url="${URL}" --data.dir="${data}" --server.pid="${SERVER_PID}" --count=5 --changes=5 --first=3100000
  stop_server
}

case "${1:-all}" in
  register) run_register ;;
  heartbeat) run_heartbeat ;;
  scale) run_scale ;;
  all) run_register; run_heartbeat; run_scale ;;
  *) echo "usage: $0 [register|heartbeat|scale|all]" >&2; exit 2 ;;
esac
