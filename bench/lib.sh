# Helpers shared by the benchmark scripts (sourced, not run). The caller sets `TMP` before
# `bench_cleanup_on_exit`, and records every process it starts in `STARTED`.

say() { printf '== %s\n' "$*" >&2; }

# bench_build PACKAGE BINARY: builds ssegate and PACKAGE's BINARY for $PROFILE (debug or
# release) and sets BIN to the directory holding both. The caller sets ROOT and PROFILE.
bench_build() {
  local flags=(--quiet)
  [ "$PROFILE" = release ] && flags+=(--release)
  cargo build "${flags[@]}" -p ssegate --bin ssegate -p "$1" --bin "$2"
  BIN=$ROOT/target/$PROFILE
}

# scaled VALUE MIN: VALUE × BENCH_SCALE (the caller's SCALE), rounded, at least MIN.
scaled() { awk -v v="$1" -v s="$SCALE" -v m="${2:-1}" 'BEGIN { x = int(v * s + 0.5); if (x < m) x = m; print x }'; }
# scaled_f VALUE MIN: the same for seconds, one decimal.
scaled_f() { awk -v v="$1" -v s="$SCALE" -v m="${2:-1}" 'BEGIN { x = v * s; if (x < m) x = m; printf "%.1f\n", x }'; }

# What every benchmark's ssegate runs with: no limit in the way of the load generator.
SSEGATE_BENCH_LIMITS=(
  SSEGATE_LIMITS__MAX_CONNECTIONS=100000
  SSEGATE_LIMITS__MAX_CONNECTIONS_PER_IP=100000
  SSEGATE_LIMITS__MAX_CONNECTIONS_PER_USER=100000
  SSEGATE_LIMITS__CONNECT_RATE_PER_IP=1000000
  SSEGATE_LIMITS__CONNECT_BURST_PER_IP=1000000
  SSEGATE_LIMITS__PUBLISH_RATE=0
  SSEGATE_LIMITS__MAX_OPEN_CONNECTIONS_PER_IP=100000
)

STARTED=() # every process the script started, by pid

# On exit: stop what was started, remove $TMP (unless BENCH_KEEP_TMP).
bench_cleanup() {
  local p
  for p in "${STARTED[@]}"; do stop_pid "$p"; done
  if [ -z "${BENCH_KEEP_TMP:-}" ]; then rm -rf "$TMP"; else say "kept $TMP"; fi
}
bench_cleanup_on_exit() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# The pid and all its descendants (children first).
tree() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null); do tree "$c"; done
  echo "$1"
}

# Stops a process we started (and what it started): TERM, then KILL after 10 s.
stop_pid() {
  local pid=$1 all i p
  kill -0 "$pid" 2>/dev/null || { forget "$pid"; return 0; }
  all=$(tree "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# Drops a pid that has ended from STARTED (so that a reused pid is never signalled).
forget() {
  local p keep=()
  for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID: until something listens on PORT, while PID lives (10 s at most).
wait_port() {
  local i
  for i in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# CPU used by the whole machine over one second, in % of one core.
machine_busy_pct() {
  local a b
  read -r -a a </proc/stat
  sleep 1
  read -r -a b </proc/stat
  # cpu user nice system idle iowait irq softirq steal (USER_HZ = 100 ticks per second)
  echo $(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
}

# The machine is shared: wait (at most QUIET_WAIT seconds, default BENCH_QUIET_WAIT or 60)
# until the rest of it uses less than BENCH_QUIET_PCT % of one core, so that the measurement
# has the cores to itself.
wait_quiet() {
  local limit=${QUIET_WAIT:-${BENCH_QUIET_WAIT:-60}} max=${BENCH_QUIET_PCT:-30} t=0 p
  [ "$limit" -gt 0 ] || return 0
  while :; do
    p=$(machine_busy_pct)
    [ "$p" -lt "$max" ] && return 0
    t=$((t + 1))
    if [ "$t" -ge "$limit" ]; then
      say "the machine is busy ($p% of a core used by other processes): measuring anyway"
      return 0
    fi
  done
}

# --- What bench/compare.sh and bench/writepath.sh share: the open-files limit, the peers'
# packages, starting ssegate and nchan, running the generator in several processes. The
# caller sets ROOT, TMP, SECRET (ssegate's JWT secret), SSEGATE (its binary), BENCH
# (ssegate-bench), OUT (where reports go) and RUN (numbers the servers' directories).

# Builds ssegate-bench and (unless BENCH_SSEGATE_BIN names another binary) ssegate in release
# mode; sets SSEGATE and BENCH.
bench_build_release() {
  if [ -n "${BENCH_SSEGATE_BIN:-}" ]; then
    say "building ssegate-bench (release; ssegate: $BENCH_SSEGATE_BIN)"
    cargo build --release --quiet -p ssegate-loadgen --bin ssegate-bench
  else
    say "building ssegate and ssegate-bench (release)"
    cargo build --release --quiet -p ssegate --bin ssegate -p ssegate-loadgen --bin ssegate-bench
  fi
  SSEGATE=${BENCH_SSEGATE_BIN:-$ROOT/target/release/ssegate}
  BENCH=$ROOT/target/release/ssegate-bench
}

# Raises the open-files limit to the hard limit; NOFILE is then the limit.
bench_raise_nofile() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  NOFILE=$(ulimit -n)
  [ "$NOFILE" = unlimited ] && NOFILE=1048576
  return 0
}

# procs_for CONNS PUBLISHERS PROCS: PROCS generator processes, or more when one would need
# more open files than NOFILE for its share of CONNS connections and its PUBLISHERS.
procs_for() {
  local per=$((NOFILE - $2 - 200)) need
  need=$((($1 + per - 1) / per))
  if [ "$3" -lt "$need" ]; then
    say "open files limit $NOFILE: using $need generator processes instead of $3"
    echo "$need"
  else
    echo "$3"
  fi
  if [ "$1" -gt $((NOFILE - 100)) ]; then
    say "warning: $1 connections in one server process but only $NOFILE open files per process"
  fi
}

# bench_install_peers NAME...: installs from Debian what is missing of the peers (nchan,
# pushpin) and tools (jq, ...) named, and curl.
bench_install_peers() {
  local need=() p
  for p in "$@"; do
    case $p in
      nchan)
        command -v nginx >/dev/null || need+=(nginx-light)
        [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan) ;;
      *) command -v "$p" >/dev/null || need+=("$p") ;;
    esac
  done
  command -v curl >/dev/null || need+=(curl)
  [ "${#need[@]}" -gt 0 ] || return 0
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null || apt-get install -y -q "${need[@]/#nginx-light/nginx}" >/dev/null
  }
}

# bench_env_lines PEER...: date, machine, rustc, the peers' versions, the ssegate commit.
bench_env_lines() {
  local p
  echo "date: $(date)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, kernel $(uname -r)"
  echo "rustc: $(rustc --version)"
  for p in "$@"; do
    case $p in
      nchan) echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null)" ;;
      pushpin) echo "pushpin: $(pushpin --version 2>&1 | head -n1) (Debian $(dpkg-query -W -f '${Version}' pushpin 2>/dev/null)), condure $(dpkg-query -W -f '${Version}' condure 2>/dev/null), zurl $(dpkg-query -W -f '${Version}' zurl 2>/dev/null)" ;;
    esac
  done
  if [ -n "${BENCH_SSEGATE_BIN:-}" ]; then
    echo "ssegate: $SSEGATE (BENCH_SSEGATE_BIN)"
  else
    echo "ssegate: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  fi
}

# spawn_ssegate [--data-dir DIR] [VAR=VALUE ...]: starts $SSEGATE on a free loopback port
# with its data in DIR (default $TMP/ssegate-$RUN/data), log.kind ${BENCH_SSEGATE_LOG:-file},
# JWT secret $SECRET and the limits raised; VAR=VALUE settings go last (they win). Does not
# wait for it. Sets SERVER_PID, SERVER_T0 (unix µs just before the start), SERVER_PORT,
# SERVER_DIR (its out.log is there), DATA_DIR, URL and PUBLISH_URL (empty: the URL).
spawn_ssegate() {
  local data
  SERVER_DIR=$TMP/ssegate-$RUN
  data=$SERVER_DIR/data
  if [ "${1:-}" = --data-dir ]; then
    data=$2
    shift 2
  fi
  mkdir -p "$SERVER_DIR"
  SERVER_PORT=$(free_port)
  DATA_DIR=$data
  URL=http://127.0.0.1:$SERVER_PORT
  PUBLISH_URL=
  SERVER_T0=${EPOCHREALTIME//[.,]/}
  env SSEGATE_AUTH__JWT_SECRET="$SECRET" SSEGATE_LOG__KIND="${BENCH_SSEGATE_LOG:-file}" RUST_LOG=warn \
    "${SSEGATE_BENCH_LIMITS[@]}" "$@" \
    "$SSEGATE" serve --listen "127.0.0.1:$SERVER_PORT" --data-dir "$data" >"$SERVER_DIR/out.log" 2>&1 &
  SERVER_PID=$!
  STARTED+=("$SERVER_PID")
}

# start_ssegate [--data-dir DIR] [VAR=VALUE ...]: spawn_ssegate, then waits for the port.
start_ssegate() {
  spawn_ssegate "$@"
  wait_port "$SERVER_PORT" "$SERVER_PID" || { cat "$SERVER_DIR/out.log" >&2; return 1; }
}

# start_nchan: nginx + nchan (bench/nchan.conf.in) on a free loopback port, in $TMP/nginx-$RUN.
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

# gen_wait NAME PID...: waits for the generator processes of NAME (process i logs to
# $OUT/parts/NAME.i.log); shows the end of each failed one's log; returns 1 if any failed.
gen_wait() {
  local name=$1 i=0 pid failed=0
  shift
  for pid in "$@"; do
    if ! wait "$pid"; then
      failed=1
      say "generator $i failed for $name:"
      tail -n 5 "$OUT/parts/$name.$i.log" >&2
    fi
    forget "$pid"
    i=$((i + 1))
  done
  return "$failed"
}

# gen_run NAME PROCS SUBS CHANNELS RATE ARGS...: runs `$BENCH run ARGS...` against the server
# started last ($URL, $SERVER_PID, $PUBLISH_URL) in PROCS processes that start together.
# Process i gets an equal share of the SUBS subscribers, of the CHANNELS channels and (RATE
# not "-") of the RATE events/s; SUBS "-": one process, no share given. Reports and logs go
# to $OUT/parts/NAME.i.{json,log}, merged into $OUT/NAME.json (summary on stderr). Returns 1
# when a process or the merge failed (NAME.json is then removed).
gen_run() {
  local name=$1 procs=$2 total=$3 channels=$4 rate=$5 i offset chans subs ok=1
  shift 5
  local common=(run --url "$URL" --server-pid "$SERVER_PID" "$@") pids=() parts=() slice=()
  [ -n "${PUBLISH_URL:-}" ] && common+=(--publish-url "$PUBLISH_URL")
  local sync=$TMP/sync-$RUN-$name
  mkdir -p "$sync" "$OUT/parts"
  for ((i = 0; i < procs; i++)); do
    # Slice i: an equal share of the channels, and the subscribers of those channels.
    offset=$((channels * i / procs))
    chans=$((channels * (i + 1) / procs - offset))
    slice=()
    if [ "$total" != - ]; then
      subs=$((total * (i + 1) / procs - total * i / procs))
      slice=(--subscribers "$subs" --channels "$chans" --channel-offset "$offset"
        --procs "$procs" --proc-index "$i" --sync-dir "$sync" --source-base "127.0.$((i + 1)).1")
    fi
    if [ "$rate" != - ]; then
      slice+=(--rate "$(awk -v r="$rate" -v c="$chans" -v t="$channels" 'BEGIN { printf "%.3f\n", r * c / t }')")
    fi
    "$BENCH" "${common[@]}" "${slice[@]}" >"$OUT/parts/$name.$i.json" 2>"$OUT/parts/$name.$i.log" &
    pids+=("$!")
    STARTED+=("$!")
    parts+=("$OUT/parts/$name.$i.json")
  done
  gen_wait "$name" "${pids[@]}" || ok=0
  if [ "$ok" = 1 ] && "$BENCH" merge "${parts[@]}" >"$OUT/$name.json" 2>"$OUT/$name.log"; then
    sed 's/^/   /' "$OUT/$name.log" >&2
  else
    rm -f "$OUT/$name.json"
    say "no result for $name"
    return 1
  fi
}
