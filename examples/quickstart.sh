#!/usr/bin/env bash
# A whole baremetal_sd fleet of one host on this machine, for a first look:
# the discovery server, a node_exporter, an agent relaying it and a Prometheus
# that finds the agent through http_sd. Everything listens on 127.0.0.1, lives
# in a fresh temporary directory and stops, directory removed, on Ctrl-C.
#
#   examples/quickstart.sh
#
# Needs prometheus and prometheus-node-exporter (Debian packages; run
# scripts/install-test-deps.sh) and builds ./baremetal_sd with make when it
# is missing. BIN overrides the binary.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-./baremetal_sd}
NODE_EXPORTER=${NODE_EXPORTER:-prometheus-node-exporter}
PROMETHEUS=${PROMETHEUS:-prometheus}

for c in "${NODE_EXPORTER}" "${PROMETHEUS}" curl; do
  if ! command -v "${c}" >/dev/null; then
    echo "quickstart: ${c} not found; run scripts/install-test-deps.sh" >&2
    exit 1
  fi
done
if [[ ! -x "${BIN}" ]]; then
  echo ">> building ${BIN}"
  make build >/dev/null
fi
BIN=$(realpath "${BIN}")

DIR=$(mktemp -d "${TMPDIR:-/tmp}/baremetal_sd-quickstart.XXXXXX")
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo ">> stopping"
  for pid in "${PIDS[@]}"; do kill -TERM "${pid}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "${pid}" 2>/dev/null || true; done
  rm -rf "${DIR}"
  echo ">> removed ${DIR}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a port nothing listens on, from a random start.
free_port() {
  local port=$((20000 + RANDOM % 30000))
  while (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null || [[ " ${USED_PORTS:-} " == *" ${port} "* ]]; do
    port=$((port + 1))
  done
  USED_PORTS="${USED_PORTS:-} ${port}"
  echo "${port}"
}
# wait_until DESCRIPTION COMMAND...: retries until COMMAND succeeds, for up
# to QUICKSTART_WAIT seconds (120 by default: a loaded machine starts
# Prometheus slowly), and gives up at once if the daemon started last died.
wait_until() {
  local what=$1
  shift
  local deadline=$((SECONDS + ${QUICKSTART_WAIT:-120}))
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
      echo "quickstart: ${what} exited; logs are in ${DIR}" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "quickstart: ${what} did not come up in ${QUICKSTART_WAIT:-120} s; logs are in ${DIR}" >&2
  exit 1
}
start() { # NAME COMMAND...: runs a daemon with its output in DIR/NAME.log
  local name=$1
  shift
  "$@" >"${DIR}/${name}.log" 2>&1 &
  PIDS+=($!)
}

SERVER_PORT=$(free_port)
NODE_PORT=$(free_port)
AGENT_PORT=$(free_port)
PROM_PORT=$(free_port)
SERVER="https://127.0.0.1:${SERVER_PORT}"

echo ">> discovery server on ${SERVER}"
start server "${BIN}" server --data.dir="${DIR}/server" --web.listen-address="127.0.0.1:${SERVER_PORT}"
wait_until "the discovery server" curl -sf --cacert "${DIR}/server/ca.crt" "${SERVER}/-/ready"

# An enrollment token for the agent and a client certificate for Prometheus,
# made on the server host with the server's own commands.
"${BIN}" token create --data.dir="${DIR}/server" --scope=enroll --ttl=1h >"${DIR}/enroll.token"
"${BIN}" cert issue --data.dir="${DIR}/server" --name=prometheus --out.dir="${DIR}/prometheus-certs" >/dev/null

echo ">> node_exporter on 127.0.0.1:${NODE_PORT}"
start node_exporter "${NODE_EXPORTER}" --web.listen-address="127.0.0.1:${NODE_PORT}"
wait_until "node_exporter" curl -sf "http://127.0.0.1:${NODE_PORT}/metrics"

cat >"${DIR}/relay.yml" <<RELAY
exporters:
  - name: node
    url: http://127.0.0.1:${NODE_PORT}/metrics
RELAY
echo ">> agent on https://127.0.0.1:${AGENT_PORT}"
start agent "${BIN}" agent --discovery.url="${SERVER}" --discovery.ca-file="${DIR}/server/ca.crt" \
  --discovery.token-file="${DIR}/enroll.token" --agent.state-dir="${DIR}/agent" \
  --web.listen-address="127.0.0.1:${AGENT_PORT}" --agent.address=127.0.0.1 \
  --agent.hostname="$(hostname)" --agent.label=role=quickstart \
  --relay.config.file="${DIR}/relay.yml"

certs="${DIR}/prometheus-certs"
cat >"${DIR}/prometheus.yml" <<PROM
global:
  scrape_interval: 5s
scrape_configs:
  # The relayed node_exporter. The exporter target label keeps a host's
  # exporters apart; the relay adds none of its own on this endpoint.
  - job_name: node
    http_sd_configs:
      - url: ${SERVER}/api/v1/discovery?exporter=node
        refresh_interval: 5s
        tls_config: &server_tls
          ca_file: ${certs}/ca.crt
          cert_file: ${certs}/prometheus.crt
          key_file: ${certs}/prometheus.key
    # Agents are verified by the agent CA; the server CA verifies only the
    # server (docs/security.md).
    tls_config: &agent_tls
      ca_file: ${certs}/agent-ca.crt
      cert_file: ${certs}/prometheus.crt
      key_file: ${certs}/prometheus.key
    relabel_configs:
      - regex: __meta_baremetal_sd_label_(.+)
        action: labelmap
      - source_labels: [__meta_baremetal_sd_hostname]
        target_label: instance
      - source_labels: [__meta_baremetal_sd_exporter]
        target_label: exporter
  # The agent's own metrics, without an exporter target label: its relay
  # metrics carry their own (baremetal_sd_relay_up{exporter="node"}).
  - job_name: baremetal_sd_agent
    http_sd_configs:
      - url: ${SERVER}/api/v1/discovery?exporter=agent
        refresh_interval: 5s
        tls_config: *server_tls
    tls_config: *agent_tls
    relabel_configs:
      - regex: __meta_baremetal_sd_label_(.+)
        action: labelmap
      - source_labels: [__meta_baremetal_sd_hostname]
        target_label: instance
PROM
echo ">> Prometheus on http://127.0.0.1:${PROM_PORT}"
start prometheus "${PROMETHEUS}" --config.file="${DIR}/prometheus.yml" \
  --storage.tsdb.path="${DIR}/prometheus-data" --web.listen-address="127.0.0.1:${PROM_PORT}"
wait_until "Prometheus" curl -sf "http://127.0.0.1:${PROM_PORT}/-/ready"

cat <<URLS

baremetal_sd quickstart is running (files and logs in ${DIR}):

  Prometheus targets   http://127.0.0.1:${PROM_PORT}/targets
  Query node_load1     http://127.0.0.1:${PROM_PORT}/graph?g0.expr=node_load1
  Discovery server     ${SERVER}/   (CA: ${DIR}/server/ca.crt)
  http_sd              curl --cacert ${certs}/ca.crt --cert ${certs}/prometheus.crt --key ${certs}/prometheus.key ${SERVER}/api/v1/discovery
  Agent relay          https://127.0.0.1:${AGENT_PORT}/exporters/node/metrics (same client certificate)

The agent's targets appear in Prometheus within a few seconds. Ctrl-C stops everything.
URLS
wait
