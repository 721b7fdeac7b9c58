#!/usr/bin/env bash
# Smoke test of the load generator for CI: starts a fresh ssegate (file log in a temporary
# directory, limits raised as in bench/compare.sh), runs ssegate-bench with 200 connections
# over 20 channels publishing 200 events/s for 2 s, and fails (exit 1) if any subscriber did
# not connect, nothing was delivered, or anything failed. Then runs ssegate-historybench
# (issue 17's history figure) at tiny sizes — 2,000 events over 20 channels, 20 queries, on
# the file and memory logs, Redis and NATS when their servers are installed, and over HTTP
# against ssegate serve — and fails if it fails or an answer lacks events. No timing is asserted.
#
#   bench/smoke.sh                         # debug build (shares the test build's dependencies)
#   BENCH_PROFILE=release bench/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PROFILE=${BENCH_PROFILE:-debug}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_build ssegate-loadgen ssegate-bench

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d /tmp/ssegate-smoke.XXXXXX)
bench_cleanup_on_exit

PORT=$(free_port)
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
SSEGATE_AUTH__JWT_SECRET=$SECRET \
  SSEGATE_LOG__KIND=file \
  RUST_LOG=warn \
  env "${SSEGATE_BENCH_LIMITS[@]}" "$BIN/ssegate" serve --listen "127.0.0.1:$PORT" \
  --data-dir "$TMP/data" >"$TMP/ssegate.log" 2>&1 &
SERVER_PID=$!
STARTED+=("$SERVER_PID")
if ! wait_port "$PORT" "$SERVER_PID"; then
  cat "$TMP/ssegate.log" >&2
  echo "smoke: ssegate did not start" >&2
  exit 1
fi

SSEGATE_BENCH_JWT_SECRET=$SECRET "$BIN/ssegate-bench" run --target ssegate --scenario channels \
  --url "http://127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
  --subscribers 200 --channels 20 --rate 200 --duration 2 --publishers 4 \
  --check >"$TMP/report.json" || {
  echo "smoke: FAILED (ssegate log follows)" >&2
  tail -n 20 "$TMP/ssegate.log" >&2
  exit 1
}

# History: the benchmark's whole path at tiny sizes.
HFLAGS=(--quiet)
[ "$PROFILE" = release ] && HFLAGS+=(--release)
cargo build "${HFLAGS[@]}" -p ssegate-loadgen --features history --bin ssegate-historybench
BACKENDS=file,memory
[ -x /usr/bin/redis-server ] && BACKENDS=$BACKENDS,redis
[ -x /usr/sbin/nats-server ] && BACKENDS=$BACKENDS,nats
"$BIN/ssegate-historybench" --backends "$BACKENDS" --events 2000 --channels 20 --queries 20 \
  --warmup 5 --nats-concurrency 32 --dir "$TMP/history" >"$TMP/history.md" 2>"$TMP/history.log" || {
  echo "smoke: history FAILED" >&2
  tail -n 20 "$TMP/history.log" >&2
  exit 1
}
echo "smoke: ok"
