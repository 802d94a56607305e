#!/usr/bin/env bash
# measure.sh — the runs behind the results table in BENCHMARKS.md, one after another.
#
# usage: bench/measure.sh [RESULTS_FILE]     (run from anywhere; default results/<date>.jsonl)
#
# Needs the release binaries: `cargo build --release --bin sluice` and
# `cargo build --release -p sluice-bench` (CARGO_TARGET_DIR may point elsewhere: set SLUICE and
# THROUGHPUT). For the comparison runs also the otlp-bench harness built in OTLP_BENCH_BIN.
# Measure on an otherwise idle machine: a compile running alongside makes the figures worthless.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLUICE=${SLUICE:-$ROOT/target/release/sluice}
THROUGHPUT=${THROUGHPUT:-$ROOT/target/release/throughput}
OTLP_BENCH=${OTLP_BENCH:-$ROOT/../shared/tools/otlp-bench}
OTLP_BENCH_BIN=${OTLP_BENCH_BIN:-$OTLP_BENCH/target/release}
OUT=${1:-$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ).jsonl}
mkdir -p "$(dirname "$OUT")"

for bin in "$SLUICE" "$THROUGHPUT"; do
  [[ -x $bin ]] || { echo "measure.sh: $bin missing (see the header of this script)" >&2; exit 2; }
done

note() { echo "# $*" | tee -a "$OUT"; }
note "$(date -u +%FT%TZ) commit $(git -C "$ROOT" rev-parse --short HEAD) on $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"

if [[ -x $OTLP_BENCH_BIN/otlp-floor ]]; then
  note "otlp-floor --seconds 3"
  "$OTLP_BENCH_BIN/otlp-floor" --seconds 3 | tee -a "$OUT"
fi

for compression in none gzip; do
  note "throughput --mode full --compression $compression"
  "$THROUGHPUT" --sluice "$SLUICE" --mode full --duration 20 --compression "$compression" | tee -a "$OUT" || true
  note "throughput --mode rate --rate 10000 --duration 30 --compression $compression"
  "$THROUGHPUT" --sluice "$SLUICE" --mode rate --rate 10000 --duration 30 --compression "$compression" | tee -a "$OUT" || true
done

# Overload: gzip makes the exporter the slow side, so the queue stays full and the receiver
# pushes back for the whole run; RSS must stay flat and follow the queue's bound.
for max_items in 100000 20000; do
  note "overload: throughput --mode full --compression gzip --duration 60 --queue-max-items $max_items"
  "$THROUGHPUT" --sluice "$SLUICE" --mode full --duration 60 --compression gzip --queue-max-items "$max_items" | tee -a "$OUT" || true
done

if [[ -x $OTLP_BENCH_BIN/otlp-load && -x $OTLP_BENCH/compare.sh ]]; then
  for config in plain gzip; do
    target=(env 'RECV_PORT={RECV_PORT}' 'SINK_PORT={SINK_PORT}' 'ADMIN_PORT={HTTP_PORT}'
            "$SLUICE" run --config "$ROOT/bench/configs/compare-$config.toml")
    note "compare.sh --duration 20 (exporter: $config)"
    OTLP_BENCH_BIN=$OTLP_BENCH_BIN "$OTLP_BENCH/compare.sh" --duration 20 --label "sluice-$config" -- "${target[@]}" | tee -a "$OUT" || true
    note "compare.sh --rate 10000 --duration 30 (exporter: $config)"
    OTLP_BENCH_BIN=$OTLP_BENCH_BIN "$OTLP_BENCH/compare.sh" --rate 10000 --duration 30 --label "sluice-$config" -- "${target[@]}" | tee -a "$OUT" || true
  done
fi
echo "measure.sh: results in $OUT" >&2
