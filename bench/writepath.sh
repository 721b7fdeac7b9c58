#!/usr/bin/env bash
# The write path's goals (issue 13) in one run: what a durable publish costs ssegate, against
# its in-memory log and against nchan, and what the file log does on disk and at a restart.
#
# Installs nginx + nchan from Debian when missing, builds ssegate and ssegate-bench in release
# mode, starts every server afresh (data in a temporary directory) and prints, then writes to
# bench/results/writepath.md, the figures and ONE table: goal, measured, target, met/missed.
#   0. fdatasync floor: 300-byte appends + fdatasync on the data directory's file system
#   1. light load (10 connections, 10 channels, 200 events/s): publish→delivery p99, file log
#      vs memory log; goal: file p99 ≤ memory p99 + 2 × fdatasync p99
#   2. 15,000 connections / 1,000 channels / 2,000 events/s (the `channels` scenario, 2
#      generator processes): ssegate (file log) p99 ≤ nchan p99, no delivery missing
#   3. publish throughput: 16 publishers, each posting its next event when the previous one is
#      acknowledged, 1 subscriber: file log ≥ nchan and ≥ half of the memory log; events per
#      fdatasync (from ssegate_log_syncs_total)
#   4. batch appends: 4 publishers posting arrays of 1,000 events: ≥ 1,000,000 events/s
#   5. restart: 1,000,000 events retained, kill -9, start: exec → first /readyz 200 ≤ 1 s
#   6. disk: 1,000,000 events published with retention_events = 10,000: du of the data
#      directory ≤ 4 × the size of 10,000 events (a fresh directory after exactly 10,000)
# Everything it started is stopped on exit.
#
#   bench/writepath.sh                     # the full run (about 5 minutes)
#   BENCH_SCALE=0.1 bench/writepath.sh     # a quick run: a tenth of the sizes and durations
#
# Environment (defaults in brackets; sizes are multiplied by BENCH_SCALE unless given):
#   BENCH_SCALE [1]  BENCH_PROCS [2] generator processes of goal 2
#   BENCH_GOALS ["1 2 3 4 5 6"] which goals to measure (the fdatasync floor is always measured)
#   BENCH_FSYNC_COUNT [2000] BENCH_LIGHT_SECS [20]
#   BENCH_CHANNELS_CONNS [15000] BENCH_CHANNELS_CHANNELS [1000] BENCH_CHANNELS_RATE [2000]
#   BENCH_CHANNELS_SECS [30] BENCH_THROUGHPUT_SECS [10] BENCH_BATCH_SECS [10]
#   BENCH_RESTART_EVENTS [1000000] BENCH_DISK_EVENTS [1000000] (retention: 10,000, not scaled)
#   BENCH_TMPDIR [/tmp] where the data directories (and the fdatasync floor's file) go
#   BENCH_OUT [bench/results] (reports in BENCH_OUT/writepath/, the summary in writepath.md)
#   BENCH_QUIET_WAIT [60] seconds to wait before each measurement for the machine to be quiet
#   (other processes below BENCH_QUIET_PCT [30] % of one core); 0 = don't wait
#   BENCH_KEEP_TMP=1 keeps the temporary directory (server logs, data)
#   BENCH_SSEGATE_BIN another ssegate binary (e.g. an older build, for before/after figures)
#   BENCH_SMOKE=1: only check that the script and the generator's subcommands hang together
#   (bash syntax, `ssegate-bench --help` for each subcommand), run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SCALE=${BENCH_SCALE:-1}
GOALS=${BENCH_GOALS:-"1 2 3 4 5 6"}
OUT_ROOT=${BENCH_OUT:-$ROOT/bench/results}
OUT=$OUT_ROOT/writepath

# shellcheck source=bench/lib.sh
. bench/lib.sh

FSYNC_COUNT=${BENCH_FSYNC_COUNT:-$(scaled 2000 200)}
LIGHT_SECS=${BENCH_LIGHT_SECS:-$(scaled_f 20 2)}
CH_CONNS=${BENCH_CHANNELS_CONNS:-$(scaled 15000 20)}
CH_CHANNELS=${BENCH_CHANNELS_CHANNELS:-$(scaled 1000 2)}
CH_RATE=${BENCH_CHANNELS_RATE:-$(scaled 2000 10)}
CH_SECS=${BENCH_CHANNELS_SECS:-$(scaled_f 30 2)}
CH_PUBLISHERS=32
TP_SECS=${BENCH_THROUGHPUT_SECS:-$(scaled_f 10 2)}
BATCH_SECS=${BENCH_BATCH_SECS:-$(scaled_f 10 2)}
RESTART_EVENTS=${BENCH_RESTART_EVENTS:-$(scaled 1000000 20000)}
DISK_EVENTS=${BENCH_DISK_EVENTS:-$(scaled 1000000 20000)}
RETAIN=10000
PROCS=${BENCH_PROCS:-2}

wants() { [[ " $GOALS " == *" $1 "* ]]; }

if [ -n "${BENCH_SMOKE:-}" ]; then
  cargo build --quiet -p ssegate-loadgen --bin ssegate-bench
  for c in run append fsync-floor wait-ready merge; do
    "$ROOT/target/debug/ssegate-bench" "$c" --help >/dev/null
  done
  bash -n "$0" && echo "writepath smoke: ok"
  exit 0
fi

bench_raise_nofile
wants 2 && PROCS=$(procs_for "$CH_CONNS" "$CH_PUBLISHERS" "$PROCS")
if wants 2 || wants 3; then bench_install_peers nchan jq; else bench_install_peers jq; fi

bench_build_release

TMP=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/ssegate-writepath.XXXXXX")
mkdir -p "$OUT/parts"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/parts/*
bench_cleanup_on_exit

SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SSEGATE_BENCH_JWT_SECRET=$SECRET
RUN=0

# --- small helpers
# jv FILE FILTER: a value of a JSON report (empty when the report or the value is missing).
jv() { [ -s "$1" ] && jq -r "($2) // empty" "$1" 2>/dev/null || true; }
# The sum of a metric's samples on /metrics (empty when the server does not have it).
metric() {
  curl -s -m 5 "$URL/metrics" 2>/dev/null |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2; n++ } END { if (n) printf "%.0f\n", s }'
}
# ms MICROSECONDS → "1.23 ms"; th NUMBER → "1,234,567"; calc EXPR (awk)
ms() { [ -n "$1" ] && awk -v v="$1" 'BEGIN { printf "%.2f ms", v / 1000 }' || echo "—"; }
th() {
  [ -n "$1" ] || { echo "—"; return; }
  awk -v v="$1" 'BEGIN { s = sprintf("%.0f", v); n = ""; while (length(s) > 3) { n = "," substr(s, length(s) - 2) n; s = substr(s, 1, length(s) - 3) } print s n }'
}
calc() { awk "BEGIN { print $1 }"; }
# busy REPORT: ", other processes' CPU N %" from a generator report (the machine is shared).
busy() {
  local o
  o=$(jv "$1" '.machine.other_cpu_pct | round')
  [ -z "$o" ] || echo ", other processes' CPU $o %"
}
# The data directory's size: du -sb (apparent bytes).
du_b() { du -sb "$1" | cut -f1; }

ROWS=()    # | goal | measured | target | met? |
DETAILS=() # one line per figure
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }
detail() {
  DETAILS+=("- $*")
  say "$*"
}
# verdict COND: "**met**" when awk says COND is true, else "**missed**".
verdict() { if [ "$(calc "($1) ? 1 : 0")" = 1 ]; then echo "**met**"; else echo "**missed**"; fi; }

stop_server() { stop_pid "$SERVER_PID"; }

# Starts ssegate (extra settings as arguments) after waiting for a quiet machine.
fresh_ssegate() {
  RUN=$((RUN + 1))
  wait_quiet
  start_ssegate "$@"
}

# append NAME ARGS...: `ssegate-bench append` against $URL → $OUT/NAME.json.
append() {
  local name=$1
  shift
  "$BENCH" append --url "$URL" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log" || {
    say "append $name failed:"
    tail -n 5 "$OUT/$name.log" >&2
    return 1
  }
  sed 's/^/   /' "$OUT/$name.log" >&2
}

{
  bench_env_lines nchan
  echo "data directories: $TMP ($(df -PT "$TMP" | awk 'NR == 2 { print $2 " on " $1 }'))"
  echo "scale: $SCALE; goals: $GOALS"
  echo "sizes: fdatasync floor $FSYNC_COUNT appends; light ${LIGHT_SECS} s; channels $CH_CONNS connections / $CH_CHANNELS channels at $CH_RATE events/s for ${CH_SECS} s in $PROCS processes; throughput ${TP_SECS} s; batch ${BATCH_SECS} s; restart $RESTART_EVENTS events; disk $DISK_EVENTS events, retention $RETAIN"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

# --- 0. fdatasync floor, on the file system of the data directories, right before goal 1.
wait_quiet
say "fdatasync floor: $FSYNC_COUNT appends of 300 bytes in $TMP/floor"
"$BENCH" fsync-floor --dir "$TMP/floor" --count "$FSYNC_COUNT" --bytes 300 >"$OUT/fsync-floor.json" 2>"$OUT/fsync-floor.log" ||
  say "fsync-floor failed: $(tail -n 3 "$OUT/fsync-floor.log")"
FSYNC_P50=$(jv "$OUT/fsync-floor.json" .us.p50)
FSYNC_P99=$(jv "$OUT/fsync-floor.json" .us.p99)
detail "fdatasync floor: 300-byte append + fdatasync p50 $(ms "$FSYNC_P50"), p99 $(ms "$FSYNC_P99") ($FSYNC_COUNT appends, max $(ms "$(jv "$OUT/fsync-floor.json" .us.max)"))"

# --- 1. light load: file log vs memory log.
if wants 1; then
  for kind in file memory; do
    say "goal 1: light load, log.kind=$kind"
    if fresh_ssegate SSEGATE_LOG__KIND=$kind; then
      gen_run "light.$kind" 1 10 10 200 --target ssegate --scenario channels \
        --channel-prefix light --duration "$LIGHT_SECS" --publishers 4 || true
      stop_server
    fi
  done
  F=$OUT/light.file.json M=$OUT/light.memory.json
  L_FILE=$(jv "$F" .delivery.latency_us.p99) L_MEM=$(jv "$M" .delivery.latency_us.p99)
  detail "light load, file log: latency p50 $(ms "$(jv "$F" .delivery.latency_us.p50)") p99 $(ms "$L_FILE"), ack p99 $(ms "$(jv "$F" .publish.ack_us.p99)"), missing $(jv "$F" .delivery.missing)$(busy "$F")"
  detail "light load, memory log: latency p50 $(ms "$(jv "$M" .delivery.latency_us.p50)") p99 $(ms "$L_MEM"), ack p99 $(ms "$(jv "$M" .publish.ack_us.p99)"), missing $(jv "$M" .delivery.missing)$(busy "$M")"
  if [ -n "$L_FILE" ] && [ -n "$L_MEM" ] && [ -n "$FSYNC_P99" ]; then
    bound=$(calc "$L_MEM + 2 * $FSYNC_P99")
    row "1 light load p99 (10 conn, 200 ev/s)" "file $(ms "$L_FILE"), memory $(ms "$L_MEM"), fdatasync p99 $(ms "$FSYNC_P99")" \
      "file ≤ memory + 2 × fdatasync = $(ms "$bound")" "$(verdict "$L_FILE <= $bound")"
  else
    row "1 light load p99 (10 conn, 200 ev/s)" "no result" "file ≤ memory + 2 × fdatasync p99" "**missed**"
  fi
fi

# --- 2. many connections: ssegate (file log) vs nchan.
if wants 2; then
  for target in ssegate nchan; do
    say "goal 2: $CH_CONNS connections / $CH_CHANNELS channels / $CH_RATE events/s, $target"
    RUN=$((RUN + 1))
    wait_quiet
    if "start_$target"; then
      gen_run "channels.$target" "$PROCS" "$CH_CONNS" "$CH_CHANNELS" "$CH_RATE" --target "$target" \
        --scenario channels --duration "$CH_SECS" --publishers "$CH_PUBLISHERS" \
        --connect-concurrency 64 --source-count 16 || true
      stop_server
    else
      say "could not start $target"
    fi
  done
  S=$OUT/channels.ssegate.json N=$OUT/channels.nchan.json
  C_S=$(jv "$S" .delivery.latency_us.p99) C_N=$(jv "$N" .delivery.latency_us.p99)
  MISS=$(jv "$S" .delivery.missing)
  for t in ssegate nchan; do
    f=$OUT/channels.$t.json
    detail "$CH_CONNS connections, $t: $(jv "$f" .connected) connected, latency p50 $(ms "$(jv "$f" .delivery.latency_us.p50)") p99 $(ms "$(jv "$f" .delivery.latency_us.p99)") p99.9 $(ms "$(jv "$f" .delivery.latency_us.p999)"), $(th "$(jv "$f" .publish.acked_per_s)") events/s acknowledged, missing $(th "$(jv "$f" .delivery.missing)") of $(th "$(jv "$f" .delivery.expected)"), errors $(jv "$f" .error_total)$(busy "$f")"
  done
  if [ -n "$C_S" ] && [ -n "$C_N" ] && [ -n "$MISS" ]; then
    row "2 $(th "$CH_CONNS") conn / $(th "$CH_CHANNELS") ch / $(th "$CH_RATE") ev/s p99" "ssegate $(ms "$C_S"), nchan $(ms "$C_N"); missing $(th "$MISS")" \
      "ssegate ≤ nchan, missing = 0" "$(verdict "$C_S <= $C_N && $MISS == 0 && $(jv "$S" .delivery.expected) > 0")"
  else
    row "2 $(th "$CH_CONNS") conn / $(th "$CH_CHANNELS") ch p99" "no result" "ssegate ≤ nchan, missing = 0" "**missed**"
  fi
fi

# --- 3. publish throughput: 16 publishers, one event per request, 1 subscriber.
if wants 3; then
  for t in file memory nchan; do
    say "goal 3: publish throughput, $t"
    RUN=$((RUN + 1))
    wait_quiet
    if [ "$t" = nchan ]; then
      start_nchan || { say "could not start nchan"; continue; }
      target=nchan
    else
      start_ssegate SSEGATE_LOG__KIND=$t || continue
      target=ssegate
    fi
    syncs0=$([ "$t" = file ] && metric ssegate_log_syncs_total || true)
    gen_run "throughput.$t" 1 1 1 - --target "$target" --scenario fanout --channel-prefix tp \
      --rate 0 --duration "$TP_SECS" --publishers 16 --threads 1 || true
    syncs1=$([ "$t" = file ] && metric ssegate_log_syncs_total || true)
    if [ -n "$syncs0" ] && [ -n "$syncs1" ]; then echo $((syncs1 - syncs0)) >"$OUT/throughput.$t.syncs"; fi
    stop_server
  done
  TP_F=$(jv "$OUT/throughput.file.json" .publish.acked_per_s)
  TP_M=$(jv "$OUT/throughput.memory.json" .publish.acked_per_s)
  TP_N=$(jv "$OUT/throughput.nchan.json" .publish.acked_per_s)
  EV=$(jv "$OUT/throughput.file.json" .publish.events_acked)
  EPS="n/a"
  if [ -s "$OUT/throughput.file.syncs" ] && [ -n "$EV" ]; then
    SY=$(cat "$OUT/throughput.file.syncs")
    if [ "$SY" -gt 0 ]; then EPS=$(calc "sprintf(\"%.1f\", $EV / $SY)"); fi
    detail "throughput, file log: $(th "$EV") events, $(th "$SY") fdatasync calls (ssegate_log_syncs_total): $EPS events per fdatasync"
  else
    detail "throughput, file log: ssegate_log_syncs_total absent from /metrics: events per fdatasync n/a"
  fi
  for t in file memory nchan; do
    f=$OUT/throughput.$t.json
    detail "throughput, $t: $(th "$(jv "$f" .publish.acked_per_s)") events/s, ack p50 $(ms "$(jv "$f" .publish.ack_us.p50)") p99 $(ms "$(jv "$f" .publish.ack_us.p99)"), delivered $(th "$(jv "$f" .delivery.deliveries)") of $(th "$(jv "$f" .delivery.expected)"), errors $(jv "$f" .error_total)$(busy "$f")"
  done
  if [ -n "$TP_F" ] && [ -n "$TP_M" ] && [ -n "$TP_N" ]; then
    row "3 publish throughput (16 publishers, 1 event/request)" "file $(th "$TP_F")/s, memory $(th "$TP_M")/s, nchan $(th "$TP_N")/s; $EPS events per fdatasync" \
      "file ≥ nchan and ≥ memory / 2 = $(th "$(calc "$TP_M / 2")")/s" "$(verdict "$TP_F >= $TP_N && $TP_F >= $TP_M / 2")"
  else
    row "3 publish throughput (16 publishers, 1 event/request)" "no result" "file ≥ nchan and ≥ memory / 2" "**missed**"
  fi
fi

# --- 4. batch appends: 4 publishers, 1,000 events per request.
if wants 4; then
  say "goal 4: batch appends for ${BATCH_SECS} s"
  B=$OUT/batch.json
  if fresh_ssegate SSEGATE_LOG__KIND=file; then
    syncs0=$(metric ssegate_log_syncs_total)
    append batch --publishers 4 --batch 1000 --duration "$BATCH_SECS" --channels 10 --channel-prefix batch || true
    syncs1=$(metric ssegate_log_syncs_total)
    stop_server
  fi
  B_EPS=$(jv "$B" .events_per_s)
  extra=""
  if [ -n "${syncs0:-}" ] && [ -n "${syncs1:-}" ] && [ -n "$(jv "$B" .events_acked)" ]; then
    extra=", $((syncs1 - syncs0)) fdatasync calls"
  fi
  detail "batch appends: $(th "$(jv "$B" .events_acked)") events in $(jv "$B" '.duration_s * 100 | round / 100') s = $(th "$B_EPS") events/s, request ack p50 $(ms "$(jv "$B" .ack_us.p50)") p99 $(ms "$(jv "$B" .ack_us.p99)"), failed $(jv "$B" .events_failed)$extra"
  if [ -n "$B_EPS" ]; then
    row "4 batch appends (4 publishers × 1,000 events/request)" "$(th "$B_EPS") events/s" "≥ 1,000,000 events/s" "$(verdict "$B_EPS >= 1000000")"
  else
    row "4 batch appends (4 publishers × 1,000 events/request)" "no result" "≥ 1,000,000 events/s" "**missed**"
  fi
fi

# --- 5. restart after kill -9 with RESTART_EVENTS events retained.
if wants 5; then
  say "goal 5: fill $RESTART_EVENTS events, kill -9, restart"
  RDATA=$TMP/restart-data
  READY_MS=
  settings=(SSEGATE_LOG__KIND=file "SSEGATE_LOG__RETENTION_EVENTS=$RESTART_EVENTS")
  if fresh_ssegate --data-dir "$RDATA" "${settings[@]}" &&
    append restart.fill --publishers 4 --batch 1000 --events "$RESTART_EVENTS" --channels 10 --channel-prefix restart; then
    kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    forget "$SERVER_PID"
    RDISK=$(du_b "$RDATA")
    RUN=$((RUN + 1))
    spawn_ssegate --data-dir "$RDATA" "${settings[@]}"
    "$BENCH" wait-ready --url "$URL" --since-us "$SERVER_T0" --interval-ms 2 --timeout 120 \
      >"$OUT/restart.ready.json" 2>"$OUT/restart.ready.log" || say "not ready: $(tail -n 3 "$SERVER_DIR/out.log")"
    READY_MS=$(jv "$OUT/restart.ready.json" .ready_ms)
    READY1=$(jv "$OUT/restart.ready.json" '.ready_ms * 10 | round / 10')
    LISTEN_MS=$(jv "$OUT/restart.ready.json" '.first_answer_ms * 10 | round / 10')
    LAST=$(jv "$OUT/restart.fill.json" .last_id)
    NEXT=
    [ -n "$READY_MS" ] && append restart.after --publishers 1 --batch 1 --events 1 --channel-prefix restart && NEXT=$(jv "$OUT/restart.after.json" .first_id)
    stop_server
    detail "restart: $(th "$(jv "$OUT/restart.fill.json" .events_acked)") events retained ($(th "$RDISK") bytes on disk), kill -9, start → listening after ${LISTEN_MS:-—} ms, /readyz 200 after ${READY1:-—} ms; last id before the kill ${LAST:-—}, next id after the restart ${NEXT:-—}"
  fi
  if [ -n "$READY_MS" ]; then
    row "5 restart after kill -9 ($(th "$RESTART_EVENTS") events)" "$(calc "sprintf(\"%.0f\", $READY_MS)") ms to /readyz 200" "≤ 1,000 ms" "$(verdict "$READY_MS <= 1000")"
  else
    row "5 restart after kill -9 ($(th "$RESTART_EVENTS") events)" "no result" "≤ 1,000 ms" "**missed**"
  fi
fi

# --- 6. disk use under retention.
if wants 6; then
  say "goal 6: disk use of exactly $RETAIN events, then of $DISK_EVENTS events with retention $RETAIN"
  D10K='' DFULL=''
  if fresh_ssegate SSEGATE_LOG__KIND=file "SSEGATE_LOG__RETENTION_EVENTS=$RETAIN" &&
    append disk.base --publishers 4 --batch 1000 --events "$RETAIN" --channels 10 --channel-prefix disk; then
    sleep 1
    D10K=$(du_b "$DATA_DIR")
  fi
  stop_server
  if fresh_ssegate SSEGATE_LOG__KIND=file "SSEGATE_LOG__RETENTION_EVENTS=$RETAIN" &&
    append disk.full --publishers 4 --batch 1000 --events "$DISK_EVENTS" --channels 10 --channel-prefix disk; then
    sleep 2 # retention may act after the last append
    DFULL=$(du_b "$DATA_DIR")
    DISK_GAUGE=$(metric ssegate_log_disk_bytes)
  fi
  stop_server
  PAYLOAD=$(jv "$OUT/disk.full.json" .body_bytes_per_event)
  detail "disk: fresh directory after exactly $(th "$RETAIN") events: $(th "$D10K") bytes (their publish JSON: $(th "$(calc "${PAYLOAD:-0} * $RETAIN")") bytes); after $(th "$(jv "$OUT/disk.full.json" .events_acked)") events with retention $(th "$RETAIN"): $(th "$DFULL") bytes (ssegate_log_disk_bytes: ${DISK_GAUGE:-absent})"
  if [ -n "$D10K" ] && [ -n "$DFULL" ] && [ "$D10K" -gt 0 ]; then
    ratio=$(calc "sprintf(\"%.2f\", $DFULL / $D10K)")
    row "6 disk after $(th "$DISK_EVENTS") events, retention $(th "$RETAIN")" "$(th "$DFULL") B = ${ratio} × $(th "$D10K") B (10,000 events)" "≤ 4 ×" "$(verdict "$ratio <= 4")"
  else
    row "6 disk after $(th "$DISK_EVENTS") events, retention $(th "$RETAIN")" "no result" "≤ 4 ×" "**missed**"
  fi
fi

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
{
  echo "# Write path (bench/writepath.sh)"
  echo
  echo '```'
  cat "$OUT/env.txt"
  echo '```'
  echo
  printf '%s\n' "${DETAILS[@]}"
  echo
  echo "| goal | measured | target | met? |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} >"$OUT_ROOT/writepath.md"
echo
cat "$OUT_ROOT/writepath.md"
echo
echo "(written to $OUT_ROOT/writepath.md; reports and logs: $OUT/)"
