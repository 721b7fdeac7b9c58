#!/usr/bin/env bash
# Speed and scale of ssegate, measured side by side with nchan (nginx module) and pushpin,
# and ssegate's Mercure hub (target ssegate-mercure) beside its native protocol.
#
# Installs nginx + nchan and pushpin from Debian when they are missing (only those named in
# BENCH_TARGETS), builds ssegate and
# ssegate-bench in release mode, then for every scenario starts each server afresh on free
# loopback ports, runs the same load against it (connection-heavy scenarios split over
# several generator processes, merged afterwards), stops it, and finally prints ONE table.
# Everything it started is stopped on exit.
#
#   bench/compare.sh                       # the full run (several minutes)
#   BENCH_SCALE=0.1 bench/compare.sh       # a quick run: a tenth of the sizes and durations
#   BENCH_TARGETS="ssegate ssegate-mercure" BENCH_SCENARIOS="fanout idle" bench/compare.sh
#                                          # native vs Mercure subscriptions (issue 15)
#
# Targets: ssegate (GET /v1/stream?channel=, POST /v1/publish), ssegate-mercure (the same
# server with [mercure] enabled and jwt_secret set: GET /.well-known/mercure?match=<topic>
# with a draft-07 token {"mercure":{"subscribe":["*"]}} per connection, POST
# /.well-known/mercure form topic=…&type=b&data=… with {"mercure":{"publish":["*"]}}; topic N
# = https://bench.example/<channel N>; BENCH_MERCURE_MATCHER=topic subscribes with topic=
# instead of match=), nchan, pushpin.
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
#   BENCH_MERCURE_MATCHER [match] how ssegate-mercure subscribers name their topic: match|topic
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
bench_raise_nofile
MAX_CONNS=$CH_CONNS
for n in "$IDLE_CONNS" "$STORM_CONNS"; do [ "$n" -gt "$MAX_CONNS" ] && MAX_CONNS=$n; done
PROCS=$(procs_for "$MAX_CONNS" "$CH_PUBLISHERS" "$PROCS")
# ssegate caps open connections at the open-file limit minus a sixteenth (18,750 of 20,000
# here) unless limits.max_open_connections is set: leave it 256 files for everything else.
SSEGATE_BENCH_LIMITS+=("SSEGATE_LIMITS__MAX_OPEN_CONNECTIONS=$((NOFILE - 256))")

# --- what the peers need, from Debian's packages (only the peers being measured).
PEERS=()
for t in $TARGETS; do
  case $t in nchan | pushpin) PEERS+=("$t") ;; esac
done
bench_install_peers "${PEERS[@]}"

bench_build_release

TMP=$(mktemp -d /tmp/ssegate-bench.XXXXXX)
mkdir -p "$OUT/parts"
rm -f "$OUT"/*.json "$OUT"/parts/* "$OUT"/table.md

bench_cleanup_on_exit

# ssegate with its Mercure hub on (the same secret signs both protocols' tokens).
start_ssegate-mercure() {
  start_ssegate SSEGATE_MERCURE__ENABLED=true SSEGATE_MERCURE__JWT_SECRET="$SECRET"
}

port_busy() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SSEGATE_BENCH_JWT_SECRET=$SECRET
RUN=0

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
  local target=$1 scenario=$2 name=$1.$2 total channels procs rate=- extra=()
  RUN=$((RUN + 1))
  BACKEND_PID=
  wait_quiet
  say "$scenario against $target"
  if ! "start_$target"; then
    say "could not start $target"
    return 0
  fi
  case $scenario in
    fanout)
      procs=1 total=$FANOUT_SUBS channels=1
      extra=(--rate 0 --duration "$FANOUT_SECS" --publishers "$FANOUT_PUBLISHERS" --threads 1) ;;
    channels)
      procs=$PROCS total=$CH_CONNS channels=$CH_CHANNELS rate=$CH_RATE
      extra=(--duration "$CH_SECS" --publishers "$CH_PUBLISHERS") ;;
    idle)
      procs=$PROCS total=$IDLE_CONNS channels=$IDLE_CHANNELS extra=(--duration "$IDLE_SECS") ;;
    storm)
      procs=$PROCS total=$STORM_CONNS channels=$STORM_CHANNELS extra=() ;;
    resume)
      procs=1 total=- channels=1 extra=(--events "$RESUME_EVENTS") ;;
  esac
  if [ "$target" = ssegate-mercure ]; then
    extra+=(--mercure-matcher "${BENCH_MERCURE_MATCHER:-match}")
  fi
  gen_run "$name" "$procs" "$total" "$channels" "$rate" --target "$target" --scenario "$scenario" \
    --connect-concurrency "$CC" --source-count 16 --batch "$BATCH" "${extra[@]}" || true
  stop_pid "$SERVER_PID"
  if [ -n "$BACKEND_PID" ]; then stop_pid "$BACKEND_PID"; fi
}

{
  bench_env_lines "${PEERS[@]}"
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
