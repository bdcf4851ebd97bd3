#!/usr/bin/env bash
# Reruns the high-availability measurements of BENCHMARKS.md: a three-member
# etcd cluster and two server replicas on 127.0.0.1, 100,000 agents enrolled
# through both; then every one of those agents heartbeats like a real agent
# (once per interval, a new mTLS connection with its own certificate each
# time) through the replica it enrolled with, and the script reports the
# heartbeat rate, the etcd writes and history that causes, the heartbeat
# rate the machine sustains, how fast registrations and last-seen times
# reach the other replica, and the replicas' memory. Usage (from the
# repository root):
#
#   make build build-bench && bench/ha.sh
#
# Environment: BIN (default ./baremetal_sd), LOADGEN (default
# ./baremetal_sd-bench), AGENTS (default 100000),
# ETCD (default /usr/bin/etcd), BASE_PORT (default 39960; uses 10 ports),
# FLUSH (the replicas' --registry.flush-interval; default: the server's
# default for etcd, 30s), INTERVAL (heartbeat interval, default 75s, the
# agents' default with --agent.ttl=5m), PACED (how long the paced phase is
# measured, default 150s: two intervals), KEEP=1 keeps the temporary
# directories.
set -euo pipefail

BIN=${BIN:-./baremetal_sd}
LOADGEN=${LOADGEN:-./baremetal_sd-bench}
AGENTS=${AGENTS:-100000}
ETCD=${ETCD:-/usr/bin/etcd}
BASE_PORT=${BASE_PORT:-39960}
FLUSH=${FLUSH:-}
INTERVAL=${INTERVAL:-75s}
PACED=${PACED:-150s}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/baremetal_sd-ha.XXXXXX")
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "${pid}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "${pid}" 2>/dev/null || true; done
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "${WORK}"; else echo "kept ${WORK}"; fi
}
trap cleanup EXIT

header() { printf '\n### %s (load average: %s)\n' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)"; }

# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND every 0.1 s.
wait_for() {
  local what=$1 secs=$2
  shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out after ${secs}s waiting for ${what}" >&2
  return 1
}

# --- etcd: three members on loopback ---------------------------------------
client_url() { echo "http://127.0.0.1:$((BASE_PORT + $1))"; }
peer_url() { echo "http://127.0.0.1:$((BASE_PORT + 3 + $1))"; }
cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}m${i}=$(peer_url "${i}")"; done
for i in 0 1 2; do
  "${ETCD}" --name "m${i}" --data-dir "${WORK}/etcd-m${i}" \
    --listen-client-urls "$(client_url "${i}")" --advertise-client-urls "$(client_url "${i}")" \
    --listen-peer-urls "$(peer_url "${i}")" --initial-advertise-peer-urls "$(peer_url "${i}")" \
    --initial-cluster "${cluster}" --initial-cluster-state new \
    --initial-cluster-token "baremetal-sd-ha-bench-${BASE_PORT}" \
    --auto-compaction-mode=periodic --auto-compaction-retention=1h \
    --logger zap --log-outputs "${WORK}/etcd-m${i}.log" &
  PIDS+=($!)
done
ENDPOINTS="$(client_url 0),$(client_url 1),$(client_url 2)"
for i in 0 1 2; do wait_for "etcd member m${i}" 60 curl -sf "$(client_url "${i}")/health"; done

# --- two replicas sharing the CA and token key -----------------------------
URL_A="https://127.0.0.1:$((BASE_PORT + 6))"
URL_B="https://127.0.0.1:$((BASE_PORT + 7))"
start_replica() { # NAME DATA_DIR PORT
  "${BIN}" server --data.dir="$2" --web.listen-address="127.0.0.1:$3" --log.level=warn \
    --storage.backend=etcd --etcd.endpoints="${ENDPOINTS}" --etcd.replica-id="$1" \
    ${FLUSH:+--registry.flush-interval="${FLUSH}"} 2>"${WORK}/$1.log" &
  PIDS+=($!)
  echo $! >"${WORK}/$1.pid"
  wait_for "replica $1" 60 curl -sf --cacert "$2/ca.crt" "https://127.0.0.1:$3/-/ready"
}
mkdir -p "${WORK}/a" "${WORK}/b"
start_replica a "${WORK}/a" $((BASE_PORT + 6))
cp "${WORK}/a/ca.crt" "${WORK}/a/ca.key" "${WORK}/a/token.key" "${WORK}/b/"
start_replica b "${WORK}/b" $((BASE_PORT + 7))
PID_A=$(cat "${WORK}/a.pid")
PID_B=$(cat "${WORK}/b.pid")

bench() { "${LOADGEN}" "$@"; }

# --- enroll the fleet, half through each replica ----------------------------
header "enroll ${AGENTS} agents, half through each replica"
half=$((AGENTS / 2))
bench register --server.url="${URL_A}" --data.dir="${WORK}/a" --server.pid="${PID_A}" \
  --count="${half}" --concurrency=32 --keep-alive --duration=10m --first=0 \
  --save="${WORK}/agents-a.txt" >"${WORK}/reg-a.txt" &
reg_a=$!
bench register --server.url="${URL_B}" --data.dir="${WORK}/b" --server.pid="${PID_B}" \
  --count=$((AGENTS - half)) --concurrency=32 --keep-alive --duration=10m --first="${half}" \
  --save="${WORK}/agents-b.txt" >"${WORK}/reg-b.txt" &
reg_b=$!
wait "${reg_a}"
wait "${reg_b}"
cat "${WORK}/reg-a.txt" "${WORK}/reg-b.txt"

# memory TITLE: the replicas' resident memory.
memory() {
  header "$1"
  for r in a b; do
    pid=$(cat "${WORK}/${r}.pid")
    printf '  replica %s  %s\n' "${r}" "$(grep -E '^(VmRSS|VmHWM|RssAnon|RssFile)' "/proc/${pid}/status" | tr -s ' \n' ' ')"
  done
}
memory "replica memory after the enrollment"

# --- the whole fleet heartbeats, paced like real agents ---------------------
# metric FILE NAME: sum of a metric's samples in a scrape (0 when absent).
metric() { awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f", s }' "$1"; }
scrape_all() { # SUFFIX
  for i in 0 1 2; do curl -sf "$(client_url "${i}")/metrics" >"${WORK}/etcd-m${i}-$1.txt"; done
  curl -sf --cacert "${WORK}/a/ca.crt" "${URL_A}/metrics" >"${WORK}/a-$1.txt"
  curl -sf --cacert "${WORK}/a/ca.crt" "${URL_B}/metrics" >"${WORK}/b-$1.txt"
}
# delta NAME FILE_PREFIX: the change of a metric between two scrapes.
delta() { echo $(($(metric "${WORK}/$2-after.txt" "$1") - $(metric "${WORK}/$2-before.txt" "$1"))); }
wall=1
rate() { awk -v n="$1" -v d="$2" -v w="${wall}" 'BEGIN { printf "  %-58s %12d in %.1f s = %10.1f/s\n", n, d, w, d / w }'; }
per_hour() { awk -v n="$1" -v d="$2" -v w="${wall}" 'BEGIN { printf "  %-58s %12d in %.1f s = %7.1f MB/hour\n", n, d, w, d / w * 3600 / 1e6 }'; }
etcd_writes() { # TITLE
  header "$1"
  # Every member applies every write, so one member's counters are the
  # cluster's.
  for name in etcd_mvcc_put_total etcd_mvcc_txn_total etcd_mvcc_delete_total etcd_disk_wal_fsync_duration_seconds_count; do
    rate "etcd ${name}" "$(delta "${name}" etcd-m0)"
  done
  for name in etcd_mvcc_db_total_size_in_bytes etcd_mvcc_db_total_size_in_use_in_bytes; do
    printf '  %-58s %12d -> %d\n' "etcd ${name}" "$(metric "${WORK}/etcd-m0-before.txt" "${name}")" "$(metric "${WORK}/etcd-m0-after.txt" "${name}")"
  done
  for r in a b; do
    rate "replica ${r}: etcd write requests" "$(delta baremetal_sd_store_etcd_write_requests_total "${r}")"
    rate "replica ${r}: etcd keys written (last-seen blobs)" "$(delta baremetal_sd_store_etcd_lastseen_keys_written_total "${r}")"
    per_hour "replica ${r}: bytes written (etcd history until compaction)" "$(delta baremetal_sd_store_etcd_written_bytes_total "${r}")"
    rate "replica ${r}: heartbeat flushes" "$(delta baremetal_sd_registry_heartbeat_flush_agents_count "${r}")"
    rate "replica ${r}: agents written by those flushes" "$(delta baremetal_sd_registry_heartbeat_flush_agents_sum "${r}")"
  done
}
heartbeat_both() { # OUTPUT_PREFIX ARGS...: one load generator per replica, its half of the fleet
  local out=$1 pa pb
  shift
  bench heartbeat --server.url="${URL_A}" --data.dir="${WORK}/a" --server.pid="${PID_A}" \
    --agents.file="${WORK}/agents-a.txt" "$@" >"${WORK}/${out}-a.txt" &
  pa=$!
  bench heartbeat --server.url="${URL_B}" --data.dir="${WORK}/b" --server.pid="${PID_B}" \
    --agents.file="${WORK}/agents-b.txt" "$@" >"${WORK}/${out}-b.txt" &
  pb=$!
  local t0 t1
  t0=$(date +%s.%N)
  sleep 5 # the warm-up
  scrape_all before
  wait "${pa}"
  wait "${pb}"
  scrape_all after
  t1=$(date +%s.%N)
  wall=$(awk -v a="${t0}" -v b="${t1}" 'BEGIN { printf "%.3f", b - a - 5 }')
  cat "${WORK}/${out}-a.txt" "${WORK}/${out}-b.txt"
  local sa sb
  sa=$(awk '$1 == "heartbeats/s" { print $2 }' "${WORK}/${out}-a.txt")
  sb=$(awk '$1 == "heartbeats/s" { print $2 }' "${WORK}/${out}-b.txt")
  echo "heartbeats/s through both replicas: $((sa + sb))"
}

header "all ${AGENTS} agents heartbeat every ${INTERVAL}, each on a new connection with its own certificate, resuming its TLS session as agents do, ${PACED} measured"
heartbeat_both paced --interval="${INTERVAL}" --warmup=5s --duration="${PACED}" --concurrency=64
etcd_writes "etcd writes while the whole fleet heartbeats at its interval"

header "heartbeats as fast as they go: distinct agents, a new connection each, resuming TLS sessions, 20 s measured"
heartbeat_both fast --new-connection --warmup=5s --duration=20s --concurrency=32
etcd_writes "etcd writes during the fastest heartbeats"

header "heartbeats as fast as they go: distinct agents, a new connection each, full handshakes, 20 s measured"
heartbeat_both full --new-connection --no-resume --warmup=5s --duration=20s --concurrency=32

# --- convergence in both directions -----------------------------------------
header "registration through a, seen in b's http_sd"
bench converge --server.url="${URL_A}" --peer.url="${URL_B}" --data.dir="${WORK}/a" --count=20 --first=7000000
header "registration through b, seen in a's http_sd"
bench converge --server.url="${URL_B}" --peer.url="${URL_A}" --data.dir="${WORK}/b" --count=20 --first=7100000

# --- last-seen times: a heartbeat through one replica, seen on the other ----
header "heartbeat through a, last-seen time on b (the flush interval, then the watch)"
bench lastseen --server.url="${URL_A}" --peer.url="${URL_B}" --data.dir="${WORK}/a" --count=5 --first=7200000
header "heartbeat through b, last-seen time on a"
bench lastseen --server.url="${URL_B}" --peer.url="${URL_A}" --data.dir="${WORK}/b" --count=5 --first=7300000

# --- memory -----------------------------------------------------------------
memory "replica memory with the fleet, after the heartbeats"
