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
