#!/usr/bin/env bash
# Cluster benchmark: the many-channels scenario on 1 ssegate node and on 3 nodes sharing one
# log engine (Redis Streams or NATS JetStream), both on loopback.
#
# For every engine and every node count it starts a fresh engine (its own redis-server or
# nats-server on a free port, data in a temporary directory) and fresh ssegate nodes on it,
# then runs the generator in 1 + BENCH_SUB_PROCS processes that start together:
#   - process 0 publishes every event to node 1 (and has no subscriber);
#   - processes 1..BENCH_SUB_PROCS subscribe only, process i on node ((i-1) mod nodes) + 1,
#     each to all the channels.
# So with 3 nodes a third of the subscribers are on the node the events are published to
# ("same-node") and two thirds on the other nodes ("cross-node": the event reaches them
# through the engine). With 1 node the same processes all subscribe to node 1. Every
# process writes what it published / should receive into the sync directory, so missing
# deliveries are exact. Prints one table and writes JSON to bench/results/cluster/.
# Everything it started is stopped on exit; all traffic stays on loopback.
#
#   bench/cluster.sh                          # redis, 1 node vs 3 nodes (~2 minutes)
#   BENCH_ENGINE="redis nats" bench/cluster.sh   # both engines, one table
#   BENCH_SCALE=0.1 bench/cluster.sh          # quick smoke run (< 1 minute)
#
# Environment (defaults in brackets; sizes are multiplied by BENCH_SCALE unless given):
#   BENCH_ENGINE [redis] (redis, nats, or both: "redis nats")  BENCH_SCALE [1]
#   BENCH_NODES [3] nodes of the cluster configuration  BENCH_CONFIGS ["1 $BENCH_NODES"]
#   BENCH_CLUSTER_CONNS [18000] subscriber connections in all
#   BENCH_CLUSTER_CHANNELS [1000]  BENCH_CLUSTER_RATE [2000] events/s in all
#   BENCH_CLUSTER_SECS [30]  BENCH_CLUSTER_PUBLISHERS [64] concurrent publish requests
#   BENCH_SUB_PROCS [BENCH_NODES] subscriber processes (raised when a process would need
#     more open files than allowed)
#   BENCH_BATCH [1] events per publish request  BENCH_CONNECT_CONCURRENCY [64 per process]
#   BENCH_REDIS_FSYNC [always] redis-server's appendfsync (everysec: to see what fsync costs)
#   BENCH_QUIET_WAIT [60, 5 when BENCH_SCALE < 1] seconds to wait before each run for the
#     machine to be quiet (other processes below BENCH_QUIET_PCT [30] % of one core)
#   BENCH_OUT [bench/results/cluster]  BENCH_KEEP_TMP=1 keeps the temporary directory
#   BENCH_BUILD=0 uses target/release/{ssegate,ssegate-bench} as they are (no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SCALE=${BENCH_SCALE:-1}
ENGINES=${BENCH_ENGINE:-redis}
NODES=${BENCH_NODES:-3}
CONFIGS=${BENCH_CONFIGS:-"1 $NODES"}
OUT=${BENCH_OUT:-$ROOT/bench/results/cluster}
CC=${BENCH_CONNECT_CONCURRENCY:-64}
BATCH=${BENCH_BATCH:-1}

# shellcheck source=bench/lib.sh
. bench/lib.sh

CONNS=${BENCH_CLUSTER_CONNS:-$(scaled 18000 30)}
CHANNELS=${BENCH_CLUSTER_CHANNELS:-$(scaled 1000 3)}
RATE=${BENCH_CLUSTER_RATE:-$(scaled 2000 10)}
SECS=${BENCH_CLUSTER_SECS:-$(scaled_f 30 1)}
PUBLISHERS=${BENCH_CLUSTER_PUBLISHERS:-64}
SUBPROCS=${BENCH_SUB_PROCS:-$NODES}
if awk -v s="$SCALE" 'BEGIN { exit !(s < 1) }'; then QUIET_DEFAULT=5; else QUIET_DEFAULT=60; fi
QUIET_WAIT=${BENCH_QUIET_WAIT:-$QUIET_DEFAULT}
REDIS_FSYNC=${BENCH_REDIS_FSYNC:-always}

for e in $ENGINES; do
  case $e in
    redis | nats) ;;
    *) say "BENCH_ENGINE: unknown engine '$e' (redis or nats)"; exit 2 ;;
  esac
done
for n in $CONFIGS; do
  if ! [ "$n" -ge 1 ] 2>/dev/null; then say "BENCH_CONFIGS: '$n' is not a node count"; exit 2; fi
done

# --- open files: every generator process and every server process stays below the limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
PER_PROC_MAX=$((NOFILE - 300))
NEED=$(((CONNS + PER_PROC_MAX - 1) / PER_PROC_MAX))
if [ "$SUBPROCS" -lt "$NEED" ]; then
  SUBPROCS=$(((NEED + NODES - 1) / NODES * NODES))
  say "open files limit $NOFILE: using $SUBPROCS subscriber processes"
fi
if [ "$((CONNS + PUBLISHERS))" -gt $((NOFILE - 200)) ]; then
  say "warning: the 1-node run holds $CONNS connections in one ssegate process but only $NOFILE open files are allowed per process"
fi

# --- the engines, from Debian's packages when missing.
need=()
for e in $ENGINES; do
  case $e in
    redis) command -v redis-server >/dev/null || need+=(redis-server) ;;
    nats) command -v nats-server >/dev/null || need+=(nats-server) ;;
  esac
done
command -v curl >/dev/null || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null
  }
fi
# Debian installs (and starts) redis as a service; this script uses its own server only.
export PATH=$PATH:/usr/sbin

SSEGATE=$ROOT/target/release/ssegate
BENCH=$ROOT/target/release/ssegate-bench
if [ "${BENCH_BUILD:-1}" = 0 ] && [ -x "$SSEGATE" ] && [ -x "$BENCH" ]; then
  say "using the release binaries as they are (BENCH_BUILD=0)"
else
  say "building ssegate and ssegate-bench (release)"
  cargo build --release --quiet -p ssegate --bin ssegate -p ssegate-loadgen --bin ssegate-bench
fi

TMP=$(mktemp -d /tmp/ssegate-cluster.XXXXXX)
bench_cleanup_on_exit

# The whole run uses these copies, whatever is built meanwhile.
cp "$SSEGATE" "$BENCH" "$TMP/"
SSEGATE=$TMP/ssegate
BENCH=$TMP/ssegate-bench
mkdir -p "$OUT/parts"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/parts/* "$OUT"/table.md "$OUT"/env.txt

# wait_ready URL PID: until GET /readyz answers 200 (the node reaches the engine), 30 s at most.
wait_ready() {
  local i
  for i in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$1/readyz" 2>/dev/null)" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SSEGATE_BENCH_JWT_SECRET=$SECRET
RUN=0

# start_engine ENGINE: a fresh redis-server / nats-server on a free port; sets ENGINE_PID, LOG_URL.
start_engine() {
  local port dir
  port=$(free_port)
  dir=$TMP/$1-$RUN
  mkdir -p "$dir"
  case $1 in
    redis)
      redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly yes \
        --appendfsync "$REDIS_FSYNC" --dir "$dir" >"$dir/out.log" 2>&1 &
      LOG_URL=redis://127.0.0.1:$port ;;
    nats)
      nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir" >"$dir/out.log" 2>&1 &
      LOG_URL=nats://127.0.0.1:$port ;;
  esac
  ENGINE_PID=$!
  STARTED+=("$ENGINE_PID")
  wait_port "$port" "$ENGINE_PID" || { cat "$dir/out.log" >&2; return 1; }
}

# start_node ENGINE K: ssegate node K on the engine; appends to NODE_PIDS and NODE_URLS.
start_node() {
  local port dir pid
  port=$(free_port)
  dir=$TMP/node-$RUN-$2
  mkdir -p "$dir"
  SSEGATE_AUTH__JWT_SECRET=$SECRET \
    SSEGATE_LOG__KIND=$1 \
    SSEGATE_LOG__URL=$LOG_URL \
    SSEGATE_LOG__STREAM=$STREAM \
    SSEGATE_SERVER__NODE_ID=node$2 \
    RUST_LOG=warn \
    env "${SSEGATE_BENCH_LIMITS[@]}" "$SSEGATE" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  NODE_PIDS+=("$pid")
  NODE_URLS+=("http://127.0.0.1:$port")
  if ! wait_port "$port" "$pid" || ! wait_ready "http://127.0.0.1:$port" "$pid"; then
    tail -n 20 "$dir/out.log" >&2
    return 1
  fi
}

# run_config ENGINE NODES: fresh engine and nodes, the generator processes, merged report.
run_config() {
  local engine=$1 nodes=$2 name=$1.$2 i k subs pids=() parts=() ok=1 procs
  RUN=$((RUN + 1))
  STREAM=bench-$$-$RUN
  NODE_PIDS=() NODE_URLS=()
  wait_quiet
  say "$engine, $nodes node(s): $CONNS subscribers over $CHANNELS channels, $RATE events/s to node 1 for ${SECS} s"
  if ! start_engine "$engine"; then
    say "could not start $engine"
    return 0
  fi
  for ((k = 1; k <= nodes; k++)); do
    if ! start_node "$engine" "$k"; then
      say "could not start ssegate node $k on $engine"
      for i in "${NODE_PIDS[@]}"; do stop_pid "$i"; done
      stop_pid "$ENGINE_PID"
      return 0
    fi
  done
  local server_pids
  server_pids=$(IFS=,; echo "${NODE_PIDS[*]}")
  procs=$((SUBPROCS + 1))
  local sync=$TMP/sync-$RUN
  mkdir -p "$sync"
  local common=(run --target ssegate --scenario channels --procs "$procs" --sync-dir "$sync"
    --publish-url "${NODE_URLS[0]}" --channels "$CHANNELS" --channel-offset 0
    --rate "$RATE" --duration "$SECS" --batch "$BATCH" --label "$engine"
    --connect-concurrency "$CC" --source-count 16)
  for ((i = 0; i < procs; i++)); do
    local this=()
    if [ "$i" = 0 ]; then
      # The publisher: every event to node 1; measures the nodes, the engine and the machine.
      this=(--url "${NODE_URLS[0]}" --subscribers 0 --publishers "$PUBLISHERS"
        --server-pid "$server_pids" --engine-pid "$ENGINE_PID")
    else
      k=$(((i - 1) % nodes))
      subs=$((CONNS * i / SUBPROCS - CONNS * (i - 1) / SUBPROCS))
      this=(--url "${NODE_URLS[$k]}" --subscribers "$subs" --subscribe-only)
    fi
    "$BENCH" "${common[@]}" "${this[@]}" --proc-index "$i" --source-base "127.0.$((i + 1)).1" \
      >"$OUT/parts/$name.$i.json" 2>"$OUT/parts/$name.$i.log" &
    pids+=("$!")
    STARTED+=("$!")
    parts+=("$OUT/parts/$name.$i.json")
  done
  gen_wait "$name" "${pids[@]}" || ok=0
  for i in "${NODE_PIDS[@]}"; do stop_pid "$i"; done
  stop_pid "$ENGINE_PID"
  if [ "$ok" = 1 ] && "$BENCH" merge "${parts[@]}" >"$OUT/$name.json" 2>"$OUT/$name.log"; then
    sed 's/^/   /' "$OUT/$name.log" >&2
  else
    rm -f "$OUT/$name.json"
    say "no result for $name"
  fi
}

{
  echo "date: $(date)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, kernel $(uname -r)"
  echo "rustc: $(rustc --version)"
  for e in $ENGINES; do
    case $e in
      redis) echo "redis: $(redis-server --version | head -n1) (appendonly yes, appendfsync $REDIS_FSYNC)" ;;
      nats) echo "nats: $(nats-server --version 2>&1 | head -n1) (JetStream, file storage)" ;;
    esac
  done
  echo "ssegate: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "scale: $SCALE; configurations: $CONFIGS node(s); generator: 1 publishing process + $SUBPROCS subscribing processes; connect concurrency $CC per process; batch $BATCH"
  echo "sizes: $CONNS subscriber connections over $CHANNELS channels ($((CONNS / SUBPROCS)) per subscribing process), $RATE events/s to node 1 for ${SECS} s, $PUBLISHERS concurrent publishers"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

for engine in $ENGINES; do
  for n in $CONFIGS; do
    run_config "$engine" "$n"
  done
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
shopt -s nullglob
results=()
for engine in $ENGINES; do
  for n in $CONFIGS; do
    [ -e "$OUT/$engine.$n.json" ] && results+=("$OUT/$engine.$n.json")
  done
done
if [ "${#results[@]}" -eq 0 ]; then
  say "no results"
  exit 1
fi
"$BENCH" cluster-table "${results[@]}" >"$OUT/table.md"
echo
cat "$OUT/env.txt"
echo
cat "$OUT/table.md"
echo
echo "(reports: $OUT/*.json; per-process parts and logs: $OUT/parts/)"
