#!/usr/bin/env bash
# Polling vs change streams, measured for the ETL-log use case (results in docs/sources.md).
#
# Starts its own PostgreSQL 15 (initdb in a temporary directory, wal_level=logical,
# pg_stat_statements, loopback on a free port) and, per scenario, its own ssegate. In each
# scenario BENCH_USERS users watch their workflow's logs (user u watches workflow
# u % BENCH_WORKFLOWS) while a writer inserts BENCH_RATE log rows/s for BENCH_SECS s:
#
#   cdc       ssegate with a `postgres` source (logical replication streamed over a
#             replication connection)                                 → SSE clients
#   poll      ssegate with a `postgres_poll` source every 5 s         → SSE clients
#   browsers  no gateway: every user polls the database every 5 s (one connection each,
#             SELECT … WHERE workflow_id = $1 AND id > $2)
#
# and prints ONE table: change→user latency (writer's clock at the INSERT → the SSE client
# receives it, or the poller first sees it), database statements/s and commits/s, and the CPU
# of the PostgreSQL processes and of ssegate. Everything it started is stopped on exit; the
# default run takes about 3 minutes (after the release build).
#
#   bench/sources.sh
#   BENCH_SECS=10 BENCH_USERS=200 bench/sources.sh         # a quick run
#
# Environment (defaults in brackets): BENCH_USERS [1000] BENCH_WORKFLOWS [200] BENCH_RATE [50]
#   BENCH_SECS [30] BENCH_POLL_SECS [5] BENCH_MODES ["cdc poll browsers"]
#   BENCH_PROFILE [release] BENCH_OUT [bench/results] BENCH_KEEP_TMP=1 keeps the temp dir;
#   BENCH_BIN_DIR=DIR uses the ssegate and ssegate-sourcebench binaries there (no build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

USERS=${BENCH_USERS:-1000}
WORKFLOWS=${BENCH_WORKFLOWS:-200}
RATE=${BENCH_RATE:-50}
SECS=${BENCH_SECS:-30}
POLL_SECS=${BENCH_POLL_SECS:-5}
MODES=${BENCH_MODES:-"cdc poll browsers"}
PROFILE=${BENCH_PROFILE:-release}
OUT=${BENCH_OUT:-$ROOT/bench/results}
PGBIN=/usr/lib/postgresql/15/bin
SECRET=sourcebench-secret-0123456789abcdef

say() { printf '== %s\n' "$*" >&2; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ ! -x "$PGBIN/postgres" ] || [ ! -e /usr/lib/postgresql/15/lib/pg_stat_statements.so ]; then
  say "installing postgresql-15"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q postgresql-15 >/dev/null || {
    apt-get update -q >/dev/null
    apt-get install -y -q postgresql-15 >/dev/null
  }
fi

if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN_DIR=$BENCH_BIN_DIR
else
  say "building ssegate and ssegate-sourcebench ($PROFILE)"
  cargo build --profile "$PROFILE" --quiet -p ssegate --bin ssegate -p ssegate-loadgen --bin ssegate-sourcebench
  case $PROFILE in dev | test) DIR=debug ;; *) DIR=$PROFILE ;; esac
  BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/$DIR
fi
SSEGATE=$BIN_DIR/ssegate
BENCH=$BIN_DIR/ssegate-sourcebench

TMP=$(mktemp -d /tmp/ssegate-sourcebench.XXXXXX)
chmod 755 "$TMP"
RESULTS=$TMP/results.jsonl
STARTED=()
cleanup() {
  local p
  for p in "${STARTED[@]}"; do
    kill -INT "$p" 2>/dev/null || true
  done
  for p in "${STARTED[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ -z "${BENCH_KEEP_TMP:-}" ]; then rm -rf "$TMP"; else say "kept $TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- PostgreSQL: as the postgres system user when we are root (it refuses root).
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  mkdir -p "$TMP/pg"
  chown postgres: "$TMP/pg"
else
  mkdir -p "$TMP/pg"
fi
PGDATA=$TMP/pg/data
PGPORT=$("$BENCH" free-port)
"${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C >/dev/null
"${AS_PG[@]}" "$PGBIN/postgres" -D "$PGDATA" -p "$PGPORT" -k "$TMP/pg" \
  -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_connections=$((USERS + 100)) \
  -c shared_preload_libraries=pg_stat_statements -c max_replication_slots=10 \
  >"$TMP/pg/output.log" 2>&1 &
PG_PID=$!
STARTED+=("$PG_PID")
for _ in $(seq 300); do
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break
  kill -0 "$PG_PID" 2>/dev/null || { cat "$TMP/pg/output.log" >&2; exit 1; }
  sleep 0.1
done
PGURL=postgres://postgres@127.0.0.1:$PGPORT/postgres
say "PostgreSQL 15 on port $PGPORT (pid $PG_PID)"

# --- ssegate with one source; sets GW_URL and GW_PID.
start_gateway() {
  local name=$1 config=$2
  SSEGATE_AUTH__JWT_SECRET=$SECRET \
    SSEGATE_LIMITS__CONNECT_RATE_PER_IP=1000000 SSEGATE_LIMITS__CONNECT_BURST_PER_IP=1000000 \
    SSEGATE_LIMITS__MAX_CONNECTIONS_PER_IP=1000000 RUST_LOG=warn \
    "$SSEGATE" serve --config "$config" --listen 127.0.0.1:0 --data-dir "$TMP/data-$name" \
    >"$TMP/gw-$name.out" 2>"$TMP/gw-$name.log" &
  GW_PID=$!
  STARTED+=("$GW_PID")
  GW_URL=
  for _ in $(seq 300); do
    GW_URL=$(sed -n "s/^ssegate listening on //p" "$TMP/gw-$name.out" 2>/dev/null | head -1 || true)
    [ -n "$GW_URL" ] && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$TMP/gw-$name.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$GW_URL" ] || { say "ssegate did not start"; exit 1; }
}

stop_gateway() {
  kill -TERM "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
}

common=(--pg "$PGURL" --postmaster-pid "$PG_PID" --users "$USERS" --workflows "$WORKFLOWS"
  --rate "$RATE" --secs "$SECS" --poll-secs "$POLL_SECS" --drain-secs $((POLL_SECS + 3))
  --out "$RESULTS")

for mode in $MODES; do
  "$BENCH" setup --pg "$PGURL"
  case $mode in
    cdc)
      cat >"$TMP/cdc.toml" <<EOF
[[sources]]
name = "bench"
type = "postgres"
url = "$PGURL"
table = "public.bench_logs"
channel = "logs:{row.workspace_id}:{row.workflow_id}"
event_type = "log.{op}"
EOF
      start_gateway cdc "$TMP/cdc.toml"
      "$BENCH" run --mode sse --label "(a) ssegate, postgres source (logical replication, streamed)" \
        --gateway "$GW_URL" --secret "$SECRET" --gateway-pid "$GW_PID" \
        --wait-slot ssegate_bench "${common[@]}" >/dev/null
      stop_gateway
      ;;
    poll)
      cat >"$TMP/poll.toml" <<EOF
[[sources]]
name = "bench"
type = "postgres_poll"
url = "$PGURL"
table = "public.bench_logs"
column = "id"
interval = "${POLL_SECS}s"
start = "beginning"
channel = "logs:{row.workspace_id}:{row.workflow_id}"
event_type = "log.{op}"
EOF
      start_gateway poll "$TMP/poll.toml"
      "$BENCH" run --mode sse --label "(b) ssegate, postgres_poll source every ${POLL_SECS} s" \
        --gateway "$GW_URL" --secret "$SECRET" --gateway-pid "$GW_PID" "${common[@]}" >/dev/null
      stop_gateway
      ;;
    browsers)
      "$BENCH" run --mode db-poll \
        --label "(c) no gateway: each user polls the database every ${POLL_SECS} s" \
        "${common[@]}" >/dev/null
      ;;
    *) say "unknown mode $mode (cdc, poll, browsers)"; exit 2 ;;
  esac
done

mkdir -p "$OUT"
REPORT=$OUT/sources-$(date -u +%Y-%m-%d).md
{
  echo "bench/sources.sh — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/^Mem:/ {print $2}') GiB, $("$PGBIN/postgres" --version), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "users $USERS watching $WORKFLOWS workflows, $RATE rows/s for $SECS s, polls every $POLL_SECS s"
  echo
  "$BENCH" table "$RESULTS"
} | tee "$REPORT"
say "written to $REPORT"
