#!/usr/bin/env bash
# Speed and scale of ssegate, measured side by side with nchan (nginx module) and pushpin.
#
# Installs nginx + nchan and pushpin from Debian when they are missing, builds ssegate and
# ssegate-bench in release mode, then for every scenario starts each server afresh on free
# loopback ports, runs the same load against it (connection-heavy scenarios split over
# several generator processes, merged afterwards), stops it, and finally prints ONE table.
# Everything it started is stopped on exit.
#
#   bench/compare.sh                       # the full run (several minutes)
#   BENCH_SCALE=0.1 bench/compare.sh       # a quick run: a tenth of the sizes and durations
#
# Environment (defaults in brackets; sizes are multiplied by BENCH_SCALE unless given):
#   BENCH_SCALE [1]  BENCH_PROCS [2]  BENCH_TARGETS ["ssegate nchan pushpin"]
#   BENCH_SCENARIOS ["fanout channels idle storm resume"]  BENCH_OUT [bench/results]
#   BENCH_FANOUT_SUBS [1000] BENCH_FANOUT_SECS [10] BENCH_FANOUT_PUBLISHERS [8]
#   BENCH_CHANNELS_CONNS [19000] BENCH_CHANNELS_CHANNELS [1000] BENCH_CHANNELS_RATE [2000]
#   BENCH_CHANNELS_SECS [30] BENCH_CHANNELS_PUBLISHERS [32 per process]
#   BENCH_IDLE_CONNS [19000] BENCH_IDLE_CHANNELS [1000] BENCH_IDLE_SECS [3]
#   BENCH_STORM_CONNS [19000] BENCH_STORM_CHANNELS [1000]
#   BENCH_RESUME_EVENTS [10000]
#   BENCH_BATCH [1] (events per publish request for ssegate and pushpin; nchan is always 1)
#   BENCH_CONNECT_CONCURRENCY [64 per process] connections being opened at once
#   BENCH_PUSHPIN_PUBLISH_PORT [5561] (a free port is taken when it is busy)
#   BENCH_QUIET_WAIT [60] seconds to wait before each run for the machine to be quiet
#   (other processes below BENCH_QUIET_PCT [30] % of one core); 0 = don't wait
#   BENCH_KEEP_TMP=1 keeps the temporary directory (server logs, configs)
#   BENCH_SSEGATE_LOG [file] ssegate's log.kind (memory: no fsync, to see what durability costs)
#   BENCH_SSEGATE_BIN another ssegate binary (e.g. an older build, for before/after figures)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SCALE=${BENCH_SCALE:-1}
PROCS=${BENCH_PROCS:-2}
TARGETS=${BENCH_TARGETS:-"ssegate nchan pushpin"}
SCENARIOS=${BENCH_SCENARIOS:-"fanout channels idle storm resume"}
OUT=${BENCH_OUT:-$ROOT/bench/results}
CC=${BENCH_CONNECT_CONCURRENCY:-64}
BATCH=${BENCH_BATCH:-1}

# shellcheck source=bench/lib.sh
. bench/lib.sh

FANOUT_SUBS=${BENCH_FANOUT_SUBS:-$(scaled 1000 10)}
FANOUT_SECS=${BENCH_FANOUT_SECS:-$(scaled_f 10 1)}
FANOUT_PUBLISHERS=${BENCH_FANOUT_PUBLISHERS:-8}
CH_CONNS=${BENCH_CHANNELS_CONNS:-$(scaled 19000 20)}
CH_CHANNELS=${BENCH_CHANNELS_CHANNELS:-$(scaled 1000 2)}
CH_RATE=${BENCH_CHANNELS_RATE:-$(scaled 2000 10)}
CH_SECS=${BENCH_CHANNELS_SECS:-$(scaled_f 30 1)}
CH_PUBLISHERS=${BENCH_CHANNELS_PUBLISHERS:-32}
IDLE_CONNS=${BENCH_IDLE_CONNS:-$(scaled 19000 20)}
IDLE_CHANNELS=${BENCH_IDLE_CHANNELS:-$(scaled 1000 2)}
IDLE_SECS=${BENCH_IDLE_SECS:-3}
STORM_CONNS=${BENCH_STORM_CONNS:-$(scaled 19000 20)}
STORM_CHANNELS=${BENCH_STORM_CHANNELS:-$(scaled 1000 2)}
RESUME_EVENTS=${BENCH_RESUME_EVENTS:-$(scaled 10000 10)}

# --- open files: every generator process and every server process stays below the limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
MAX_CONNS=$CH_CONNS
for n in "$IDLE_CONNS" "$STORM_CONNS"; do [ "$n" -gt "$MAX_CONNS" ] && MAX_CONNS=$n; done
# Each generator process: its subscribers + publishers + some slack.
PER_PROC_MAX=$((NOFILE - CH_PUBLISHERS - 200))
NEED=$(((MAX_CONNS + PER_PROC_MAX - 1) / PER_PROC_MAX))
if [ "$PROCS" -lt "$NEED" ]; then
  say "open files limit $NOFILE: using $NEED generator processes instead of $PROCS"
  PROCS=$NEED
fi
if [ "$MAX_CONNS" -gt $((NOFILE - 100)) ]; then
  say "warning: $MAX_CONNS connections in one server process but only $NOFILE open files per process"
fi

# --- what the peers need, from Debian's packages.
need=()
command -v nginx >/dev/null || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan)
command -v pushpin >/dev/null || need+=(pushpin)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null || apt-get install -y -q nginx libnginx-mod-nchan pushpin >/dev/null
  }
fi
command -v curl >/dev/null || { say "installing curl"; apt-get install -y -q curl >/dev/null; }

say "building ssegate and ssegate-bench (release)"
cargo build --release --quiet -p ssegate --bin ssegate -p ssegate-loadgen --bin ssegate-bench
SSEGATE=${BENCH_SSEGATE_BIN:-$ROOT/target/release/ssegate}
BENCH=$ROOT/target/release/ssegate-bench

TMP=$(mktemp -d /tmp/ssegate-bench.XXXXXX)
mkdir -p "$OUT/parts"
rm -f "$OUT"/*.json "$OUT"/parts/* "$OUT"/table.md

bench_cleanup_on_exit

port_busy() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SSEGATE_BENCH_JWT_SECRET=$SECRET
RUN=0

start_ssegate() {
  local port dir
  port=$(free_port)
  dir=$TMP/ssegate-$RUN
  mkdir -p "$dir"
  SSEGATE_AUTH__JWT_SECRET=$SECRET \
    SSEGATE_LOG__KIND="${BENCH_SSEGATE_LOG:-file}" \
    RUST_LOG=warn \
    env "${SSEGATE_BENCH_LIMITS[@]}" "$SSEGATE" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/out.log" 2>&1 &
  SERVER_PID=$!
  STARTED+=("$SERVER_PID")
  URL=http://127.0.0.1:$port
  PUBLISH_URL=
  wait_port "$port" "$SERVER_PID" || { cat "$dir/out.log" >&2; return 1; }
}

start_nchan() {
  local port dir
  port=$(free_port)
  dir=$TMP/nginx-$RUN
  mkdir -p "$dir"
  sed -e "s#@PREFIX@#$dir#g" -e "s#@PORT@#$port#g" "$ROOT/bench/nchan.conf.in" >"$dir/nginx.conf"
  nginx -p "$dir/" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
  SERVER_PID=$!
  STARTED+=("$SERVER_PID")
  URL=http://127.0.0.1:$port
  PUBLISH_URL=
  wait_port "$port" "$SERVER_PID" || { cat "$dir/out.log" "$dir/error.log" >&2; return 1; }
}

start_pushpin() {
  local port bport pub z0 z2 z3 dir
  dir=$TMP/pushpin-$RUN
  mkdir -p "$dir/run" "$dir/log"
  bport=$(free_port)
  "$BENCH" grip-backend --listen "127.0.0.1:$bport" >"$dir/backend.log" 2>&1 &
  BACKEND_PID=$!
  STARTED+=("$BACKEND_PID")
  pub=${BENCH_PUSHPIN_PUBLISH_PORT:-5561}
  z0=5560 z2=5562 z3=5563
  if port_busy "$pub" || port_busy $z0 || port_busy $z2 || port_busy $z3; then
    pub=$(free_port) z0=$(free_port) z2=$(free_port) z3=$(free_port)
  fi
  port=$(free_port)
  sed -e "s#@DIR@#$dir#g" -e "s#@PORT@#$port#g" -e "s#@PUBPORT@#$pub#g" \
    -e "s#@ZMQPORT0@#$z0#g" -e "s#@ZMQPORT2@#$z2#g" -e "s#@ZMQPORT3@#$z3#g" \
    "$ROOT/bench/pushpin.conf.in" >"$dir/pushpin.conf"
  echo "* 127.0.0.1:$bport" >"$dir/routes"
  pushpin --config "$dir/pushpin.conf" --port "127.0.0.1:$port" >"$dir/out.log" 2>&1 &
  SERVER_PID=$!
  STARTED+=("$SERVER_PID")
  URL=http://127.0.0.1:$port
  PUBLISH_URL=http://127.0.0.1:$pub/publish/
  wait_port "$port" "$SERVER_PID" && wait_port "$pub" "$SERVER_PID" || { cat "$dir/out.log" >&2; return 1; }
  # One request through the proxy to the backend, so that every part is up.
  curl -s -m 3 -N "$URL/stream/bench-ready" 2>/dev/null | head -c 1 >/dev/null || true
}

# Runs processes of the generator for one scenario against one target; merges their reports.
run_scenario() {
  local target=$1 scenario=$2 name=$1.$2 total channels procs i subs chans offset rate
  local common=() extra=() pids=() parts=() ok=1
  RUN=$((RUN + 1))
  BACKEND_PID=
  wait_quiet
  say "$scenario against $target"
  if ! "start_$target"; then
    say "could not start $target"
    return 0
  fi
  common=(run --target "$target" --scenario "$scenario" --url "$URL" --server-pid "$SERVER_PID"
    --connect-concurrency "$CC" --source-count 16 --batch "$BATCH")
  [ -n "$PUBLISH_URL" ] && common+=(--publish-url "$PUBLISH_URL")
  case $scenario in
    fanout)
      procs=1 total=$FANOUT_SUBS channels=1
      extra=(--rate 0 --duration "$FANOUT_SECS" --publishers "$FANOUT_PUBLISHERS" --threads 1) ;;
    channels)
      procs=$PROCS total=$CH_CONNS channels=$CH_CHANNELS
      extra=(--duration "$CH_SECS" --publishers "$CH_PUBLISHERS") ;;
    idle)
      procs=$PROCS total=$IDLE_CONNS channels=$IDLE_CHANNELS extra=(--duration "$IDLE_SECS") ;;
    storm)
      procs=$PROCS total=$STORM_CONNS channels=$STORM_CHANNELS extra=() ;;
    resume)
      procs=1 total=1 channels=1 extra=(--events "$RESUME_EVENTS") ;;
  esac
  local sync=$TMP/sync-$RUN
  mkdir -p "$sync"
  for ((i = 0; i < procs; i++)); do
    # Slice i: an equal share of the channels, and the subscribers of those channels.
    offset=$((channels * i / procs))
    chans=$((channels * (i + 1) / procs - offset))
    subs=$((total * (i + 1) / procs - total * i / procs))
    local slice=(--subscribers "$subs" --channels "$chans" --channel-offset "$offset"
      --procs "$procs" --proc-index "$i" --sync-dir "$sync" --source-base "127.0.$((i + 1)).1")
    [ "$scenario" = resume ] && slice=()
    if [ "$scenario" = channels ]; then
      rate=$(awk -v r="$CH_RATE" -v c="$chans" -v t="$channels" 'BEGIN { printf "%.3f\n", r * c / t }')
      slice+=(--rate "$rate")
    fi
    "$BENCH" "${common[@]}" "${extra[@]}" "${slice[@]}" \
      >"$OUT/parts/$name.$i.json" 2>"$OUT/parts/$name.$i.log" &
    pids+=("$!")
    STARTED+=("$!")
    parts+=("$OUT/parts/$name.$i.json")
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      ok=0
      say "generator $i failed for $name:"
      tail -n 5 "$OUT/parts/$name.$i.log" >&2
    fi
  done
  stop_pid "$SERVER_PID"
  if [ -n "$BACKEND_PID" ]; then stop_pid "$BACKEND_PID"; fi
  for i in "${pids[@]}"; do forget "$i"; done
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
  echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null)"
  echo "pushpin: $(pushpin --version 2>&1 | head -n1) (Debian $(dpkg-query -W -f '${Version}' pushpin 2>/dev/null)), condure $(dpkg-query -W -f '${Version}' condure 2>/dev/null), zurl $(dpkg-query -W -f '${Version}' zurl 2>/dev/null)"
  echo "ssegate: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "scale: $SCALE; generator processes: $PROCS; connect concurrency: $CC per process; batch: $BATCH"
  echo "sizes: fanout $FANOUT_SUBS subscribers ${FANOUT_SECS} s, $FANOUT_PUBLISHERS publishers; channels $CH_CONNS connections / $CH_CHANNELS channels at $CH_RATE events/s for ${CH_SECS} s, $CH_PUBLISHERS publishers per process; idle $IDLE_CONNS; storm $STORM_CONNS; resume $RESUME_EVENTS events"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

for scenario in $SCENARIOS; do
  for target in $TARGETS; do
    run_scenario "$target" "$scenario"
  done
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
shopt -s nullglob
results=("$OUT"/*.json)
if [ "${#results[@]}" -eq 0 ]; then
  say "no results"
  exit 1
fi
"$BENCH" table "${results[@]}" >"$OUT/table.md"
echo
cat "$OUT/env.txt"
echo
cat "$OUT/table.md"
echo
echo "(reports: $OUT/*.json; per-process parts and logs: $OUT/parts/)"
