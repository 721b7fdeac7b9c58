#!/usr/bin/env bash
# Runs every fuzz target of ssegate for a bounded time, one after the other:
#
#   fuzz/run.sh SECONDS [TARGET...]      (default targets: token channel publish head)
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer=address); on a stable toolchain they
# are enabled with RUSTC_BOOTSTRAP=1. When fuzzing is not possible here (cargo-fuzz cannot
# be installed, the compiler refuses the sanitizer flags, no C++ compiler for libFuzzer),
# prints "skipped: <reason>" and exits 0. A harness that does not compile, or a target that
# crashes, exits non-zero. One summary line per target; full logs in fuzz/logs/.
#
# Environment: CARGO_BUILD_JOBS (default 1: fuzz builds share the machine), SSEGATE_FUZZ_RSS_MB
# (default 2048), SSEGATE_FUZZ_TIMEOUT_S (one input taking longer is a failure, default 25),
# SSEGATE_FUZZ_DEV=1 builds without optimizations (`cargo fuzz --dev`: a much shorter build
# and slower executions — for CI's short smoke; campaigns use the default release build).
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir="$PWD"

usage() { echo "usage: fuzz/run.sh SECONDS [token|channel|publish|head ...]" >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[0-9]+$ && "$1" -gt 0 ]] || usage
seconds="$1"
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(token channel publish head)
for t in "${targets[@]}"; do
  [[ -f "fuzz_targets/$t.rs" ]] || { echo "fuzz: unknown target $t" >&2; exit 2; }
done

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
rss_mb="${SSEGATE_FUZZ_RSS_MB:-2048}"
timeout_s="${SSEGATE_FUZZ_TIMEOUT_S:-25}"
profile=()
[[ "${SSEGATE_FUZZ_DEV:-0}" == 1 ]] && profile=(--dev)
mkdir -p logs

skip() { echo "fuzz: skipped: $*"; exit 0; }

# 1. cargo-fuzz, installed from crates.io when missing.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  if ! cargo install cargo-fuzz --locked >logs/install.log 2>&1; then
    skip "cargo-fuzz is not installed and cannot be installed (see fuzz/logs/install.log)"
  fi
fi

# 2. Does this toolchain take the sanitizer flags, and is there a C++ compiler for libFuzzer?
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
echo 'fn main() {}' >"$probe/p.rs"
if ! rustc --edition 2021 -Zsanitizer=address -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -o "$probe/p" "$probe/p.rs" >logs/probe.log 2>&1; then
  skip "this toolchain ($(rustc --version)) refuses -Zsanitizer=address even with RUSTC_BOOTSTRAP=1 (see fuzz/logs/probe.log)"
fi
if ! "${CXX:-c++}" --version >/dev/null 2>&1; then
  skip "no C++ compiler (${CXX:-c++}) to build libFuzzer"
fi

# 3. Build every target once (debug assertions and ASan, as `cargo fuzz build` does).
echo "fuzz: building the fuzz targets (CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS${profile[*]:+, ${profile[*]}})"
if ! cargo fuzz build "${profile[@]}" >logs/build.log 2>&1; then
  if grep -qE "only accepted on the nightly|unknown unstable option|-Z.*(nightly|unstable)|sanitizer.*(not supported|unsupported)|failed to run custom build command for .libfuzzer-sys|unable to find (a )?c\+\+ compiler" logs/build.log; then
    skip "the toolchain cannot build fuzz targets: $(grep -m1 -E '^error' logs/build.log || true) (see fuzz/logs/build.log)"
  fi
  tail -40 logs/build.log
  echo "fuzz: the fuzz targets do not build (see fuzz/logs/build.log)"
  exit 1
fi

# 4. Run each target for SECONDS seconds on its corpus (fuzz/corpus/T, kept between runs and
#    never committed) and its seeds (fuzz/seeds/T).
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="logs/$t.log"
  rc=0
  # The token target writes freshly minted tokens (ssegate::auth::Minter) into its corpus.
  SSEGATE_FUZZ_SEEDS_OUT="$fuzz_dir/corpus/token" \
    cargo fuzz run "${profile[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$timeout_s" \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  corpus="$(find "corpus/$t" -type f | wc -l)"
  if [[ $rc -eq 0 ]]; then
    echo "fuzz $t: ${execs:-?} executions in ${seconds}s (${rate:-?}/s), corpus ${corpus} inputs, no crash"
  else
    failed=1
    artifact="$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/Test unit written to //')"
    grep -A1 -E "panicked at" "$log" | head -2 || true
    grep -E "ERROR: (libFuzzer|AddressSanitizer)" "$log" | head -1 || true
    echo "fuzz $t: CRASHED after ${execs:-?} executions (exit $rc), input: ${artifact:-see fuzz/$log}; reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t ${artifact:-<input>}"
  fi
done
exit "$failed"
