#!/usr/bin/env bash
# HTTP/1.1 vs HTTP/2 over TLS (results in docs/benchmarks.md): the fanout scenario against one
# ssegate listening with TLS (a self-signed certificate made here with openssl), once with
# every subscriber on its own TLS connection (HTTP/1.1, as browsers do), once with the streams
# multiplexed over HTTP/2 connections (100 streams per connection, as the tabs of one origin
# share one connection). Same server, same build, same load; prints one table.
#
#   bench/http2.sh                                  # 1,000 subscribers, 8 publishers, 10 s
#   BENCH_SUBS=200 BENCH_SECS=3 bench/http2.sh      # a quick run
#
# Environment: BENCH_SUBS [1000] BENCH_PUBLISHERS [8] BENCH_SECS [10] BENCH_STREAMS_PER_CONN
#   [100] BENCH_RUNS [3] (runs per protocol, alternating; the table shows each and the
#   median) BENCH_BUILD=0 uses target/release as it is. Everything it started is stopped on
#   exit; traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SUBS=${BENCH_SUBS:-1000}
PUBS=${BENCH_PUBLISHERS:-8}
SECS=${BENCH_SECS:-10}
SPC=${BENCH_STREAMS_PER_CONN:-100}
RUNS=${BENCH_RUNS:-3}
BIN=$ROOT/target/release

if [ "${BENCH_BUILD:-1}" != 0 ]; then
  cargo build --release --quiet -p ssegate --bin ssegate -p ssegate-loadgen --bin ssegate-tlsbench
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# shellcheck source=bench/lib.sh
. bench/lib.sh
TMP=$(mktemp -d /tmp/ssegate-http2.XXXXXX)
bench_cleanup_on_exit

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench \
  -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

PORT=$(free_port)
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SSEGATE_BENCH_JWT_SECRET=$SECRET
SSEGATE_AUTH__JWT_SECRET=$SECRET \
  SSEGATE_SERVER__TLS_CERT_FILE=$TMP/cert.pem \
  SSEGATE_SERVER__TLS_KEY_FILE=$TMP/key.pem \
  SSEGATE_LOG__KIND=file \
  RUST_LOG=warn \
  env "${SSEGATE_BENCH_LIMITS[@]}" "$BIN/ssegate" serve --listen "127.0.0.1:$PORT" \
  --data-dir "$TMP/data" >"$TMP/ssegate.log" 2>&1 &
SERVER_PID=$!
STARTED+=("$SERVER_PID")
wait_port "$PORT" "$SERVER_PID" || { cat "$TMP/ssegate.log" >&2; exit 1; }

for run in $(seq "$RUNS"); do
  for h in 1 2; do
    printf '== run %s, HTTP/%s\n' "$run" "$h" >&2
    "$BIN/ssegate-tlsbench" --url "https://127.0.0.1:$PORT" --ca "$TMP/cert.pem" --http "$h" \
      --subscribers "$SUBS" --publishers "$PUBS" --duration "$SECS" \
      --streams-per-connection "$SPC" >"$TMP/h$h-$run.json"
  done
done

echo
echo "bench/http2.sh — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), ssegate $(git rev-parse --short HEAD), $SUBS subscribers, $PUBS publishers, ${SECS} s per run"
echo
python3 - "$TMP" "$RUNS" <<'PY'
import json, statistics, sys
tmp, runs = sys.argv[1], int(sys.argv[2])
rows = {h: [json.load(open(f"{tmp}/h{h}-{r}.json")) for r in range(1, runs + 1)] for h in (1, 2)}
print("| | TLS connections | events/s acknowledged | deliveries/s (runs) | median deliveries/s | latency p50 / p99 (median run) | missing |")
print("|---|---:|---:|---|---:|---|---:|")
for h, rs in rows.items():
    med = sorted(rs, key=lambda r: r["deliveries_per_sec"])[len(rs) // 2]
    print(f"| HTTP/{'1.1' if h == 1 else '2'} | {rs[0]['connections']:,} | "
          f"{statistics.median(r['acked'] / r['publish_secs'] for r in rs):,.0f} | "
          f"{', '.join(format(r['deliveries_per_sec'], ',.0f') for r in rs)} | "
          f"{med['deliveries_per_sec']:,.0f} | "
          f"{med['latency_ms']['p50']:.2f} ms / {med['latency_ms']['p99']:.2f} ms | "
          f"{sum(r['missing'] for r in rs)} |")
PY
