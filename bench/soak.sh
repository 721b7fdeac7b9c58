#!/usr/bin/env bash
# Soak benchmark (issue 11): one ssegate node (file log in a temporary directory, a fresh
# HS256 secret, JSON log format) under minutes of mixed load, then checks (bench/soak/):
#
#   - 2,000 streams held open with churn (100 client disconnects and connects per second:
#     reopening with Last-Event-ID, or leaving and replaced by brand-new subscribers), tokens
#     of 20–40 s (closing token_expired, then a reconnect with a fresh token), an admin kick
#     every 3 s; 1,000 events/s from 8 keep-alive publishers over 200 channels; 50 slow readers;
#   - from 127.0.0.2, whose per-address limits stay at the node's defaults: slowloris heads,
#     26-byte partial requests, idle keep-alive connections, bursts past
#     limits.max_open_connections_per_ip, and cross-site requests (cookie credentials,
#     another Origin, text/plain or form bodies) to /v1/publish and /v1/admin/drain;
#   - /healthz every 100 ms, the node's RSS and open files every second.
#
# Then publishing stops, every subscriber drains, and it fails (exit 1) unless: every
# subscriber got exactly the events it was owed (no loss, no duplicate, in order, across its
# reconnects); RSS and open files after the drain are within 10 % of the baseline taken
# after the warm-up; /healthz p99 < 50 ms; the server log has no panic and no ERROR; the
# attack connections were closed within server.head_timeout_ms / idle_timeout_ms (run at 2 s
# and 5 s); the cross-site requests were refused and changed nothing.
#
# The node's per-address stream and connect-rate limits are NOT raised: the well-behaved
# streams come from 127.0.0.9–29 (about 100 per address, under the defaults), so the
# attacker's address meets the default caps.
#
#   bench/soak.sh                                    # 2 minutes of load, debug build
#   SOAK_MINUTES=30 BENCH_PROFILE=release bench/soak.sh    # the recorded figures
#   SOAK_ARGS="--fault skip" bench/soak.sh           # more ssegate-soak options (--help)
#
# The node runs with log.file_cache_mb = 4 (SOAK_FILE_CACHE_MB), so that its page cache is
# full before the baseline is taken. The full report goes to bench/results/soak.json
# (SOAK_REPORT) and the summary to bench/results/soak.txt; the output is the summary's
# headline, figures and failed checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MINUTES=${SOAK_MINUTES:-2}
PROFILE=${BENCH_PROFILE:-debug}
HEAD_MS=2000
IDLE_MS=5000
ORIGIN=https://app.example
# The file log's in-memory tail is a bounded cache, not a leak, but at the default it fills
# for minutes and would hide one; a small one is full within the warm-up. So is the
# idempotency window (every soak publish carries a key, held in memory for
# log.dedupe_window_s): 30 s instead of 300 s makes it reach its steady size before the
# baseline is taken (40 s into the load).
CACHE_MB=${SOAK_FILE_CACHE_MB:-4}
DEDUPE_S=${SOAK_DEDUPE_WINDOW_S:-30}
REPORT=${SOAK_REPORT:-$ROOT/bench/results/soak.json}

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_build ssegate-soak ssegate-soak

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d /tmp/ssegate-soak.XXXXXX)
bench_cleanup_on_exit

# The machine may be shared: give other work up to 30 s (BENCH_QUIET_WAIT) to finish; the
# report says how much CPU other processes took during the load.
QUIET_WAIT=${BENCH_QUIET_WAIT:-30} wait_quiet

PORT=$(free_port)
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$TMP/soak.toml" <<TOML
[server]
log_format = "json"

[log]
file_cache_mb = $CACHE_MB
dedupe_window_s = $DEDUPE_S

[cors]
allowed_origins = ["$ORIGIN"]
TOML

# Short connection deadlines, so that the attack connections are visibly cut — when this
# ssegate has them (an unknown key is a configuration error).
TIMEOUTS=(SSEGATE_SERVER__HEAD_TIMEOUT_MS=$HEAD_MS SSEGATE_SERVER__IDLE_TIMEOUT_MS=$IDLE_MS)
if env SSEGATE_AUTH__JWT_SECRET="$SECRET" "${TIMEOUTS[@]}" \
  "$BIN/ssegate" check-config "$TMP/soak.toml" >/dev/null 2>&1; then
  SETTINGS=present
else
  SETTINGS=absent
  TIMEOUTS=()
  say "this ssegate has no server.head_timeout_ms / idle_timeout_ms: the attack runs against its built-in deadlines"
fi

SSEGATE_AUTH__JWT_SECRET=$SECRET SSEGATE_LOG__KIND=file RUST_LOG=warn \
  env "${TIMEOUTS[@]}" "$BIN/ssegate" serve --config "$TMP/soak.toml" \
  --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" >"$TMP/ssegate.log" 2>&1 &
SERVER_PID=$!
STARTED+=("$SERVER_PID")
if ! wait_port "$PORT" "$SERVER_PID"; then
  cat "$TMP/ssegate.log" >&2
  echo "soak: ssegate did not start" >&2
  exit 1
fi

mkdir -p "$(dirname "$REPORT")"
SUMMARY=${REPORT%.json}.txt
# The short debug run (the test command's) reports timing figures without failing on them:
# on a shared 2-core machine they measure the neighbours as much as ssegate. The recorded
# release runs keep every check strict (SOAK_STRICT_TIMING=1 forces it here too).
TIMING=()
if [ "$PROFILE" != release ] && [ "${SOAK_STRICT_TIMING:-0}" != 1 ]; then
  TIMING=(--timing-advisory)
fi
rc=0
# shellcheck disable=SC2086 # SOAK_ARGS is a list of options
SOAK_JWT_SECRET=$SECRET "$BIN/ssegate-soak" --url "http://127.0.0.1:$PORT" \
  --server-pid "$SERVER_PID" --server-log "$TMP/ssegate.log" --minutes "$MINUTES" \
  --head-timeout-ms "$HEAD_MS" --idle-timeout-ms "$IDLE_MS" --settings "$SETTINGS" \
  --allowed-origin "$ORIGIN" --profile "$PROFILE" --report "$REPORT" "${TIMING[@]}" ${SOAK_ARGS:-} \
  2>"$SUMMARY" || rc=$?

alive=1
kill -0 "$SERVER_PID" 2>/dev/null || alive=0
stop_pid "$SERVER_PID"
grep -E '^(soak:|ssegate-soak:|  (load|cpu|figures|FAIL|ADVISORY))' "$SUMMARY" || cat "$SUMMARY"
if [ "$alive" = 0 ]; then
  echo "soak: ssegate exited during the run; the end of its log:" >&2
  tail -n 20 "$TMP/ssegate.log" >&2
  rc=1
fi
# Errors logged while shutting down come after the program's own look at the log.
if grep -qiE '"level":"ERROR"|panick' "$TMP/ssegate.log"; then
  echo "soak: the server log has ERROR or panic lines:" >&2
  grep -iE '"level":"ERROR"|panick' "$TMP/ssegate.log" | head -n 5 >&2
  rc=1
fi
echo "soak: report in ${REPORT#"$ROOT"/}, summary in ${SUMMARY#"$ROOT"/}"
exit "$rc"
