#!/usr/bin/env bash
# Server memory with COUNT idle agent tunnels, and the time until they are
# all back after a server restart (BENCHMARKS.md, Tunnels). Loopback only.
# BSD and LOADGEN name the server and load generator binaries; HOLD is how
# long the tunnels idle before the memory is read (over 2 minutes lets the
# Go runtime run at least one periodic collection with every tunnel up).
set -u
BSD=${BSD:-./baremetal_sd}
LOADGEN=${LOADGEN:-./baremetal_sd-bench}
D=$(mktemp -d /tmp/tunbench.XXXX)
PORT=$((20000 + RANDOM % 20000))
URL=https://127.0.0.1:$PORT
"$BSD" server --data.dir=$D/data --web.listen-address=127.0.0.1:$PORT --log.level=warn > $D/server1.log 2>&1 &
SPID=$!
for i in $(seq 1 100); do curl -sk $URL/-/ready >/dev/null && break; sleep 0.2; done
timeout 900 "$LOADGEN" tunnels --server.url=$URL --data.dir=$D/data --server.pid=$SPID --count=${COUNT:-10000} --hold=${HOLD:-5s} --restart --timeout=5m > $D/bench.log 2>&1 &
BPID=$!
for i in $(seq 1 3000); do grep -q "restart the server now" $D/bench.log && break; kill -0 $BPID 2>/dev/null || break; sleep 0.2; done
kill -TERM $SPID; wait $SPID
"$BSD" server --data.dir=$D/data --web.listen-address=127.0.0.1:$PORT --log.level=warn > $D/server2.log 2>&1 &
SPID2=$!
wait $BPID
cat $D/bench.log
kill -TERM $SPID2; wait $SPID2
tail -n 3 "$D/server1.log" "$D/server2.log"
rm -rf $D
