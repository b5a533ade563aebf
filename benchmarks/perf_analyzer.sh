#!/usr/bin/env bash
# perf_analyzer (Triton's own load generator, an independent C++ client) against detserve's Open
# Inference Protocol endpoint, and detserve-bench against detserve.v1, on one server, with the
# same JPEG files, at the same concurrencies, one after the other.
#
#   bash benchmarks/perf_analyzer.sh [OUT_DIR]      (default benchmarks/results/perf_analyzer)
#
# perf_analyzer is the binary inside the tritonclient 2.48.0 wheel (later wheels no longer ship
# it); it needs libb64.so.0d (Debian's libb64-0d, installed with apt-get when missing) and
# libcudart.so.12 (from the nvidia-cuda-runtime-cu12 wheel), no GPU. Both wheels are fetched
# with pip into $PA_CACHE once. The server is the packaged default (shapes@320, OpenVINO INT8),
# started here on $PORT. Results: perf_analyzer.csv (the full ladder), runs/ (the interleaved
# comparison: perf_analyzer CSVs, detserve-bench results, server statistics), compare.md, logs.
# Waits while /tmp/detserve/BENCH_LOCK exists, and holds it while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/perf_analyzer}
PORT=${PORT:-50091}
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
PA_CACHE=${PA_CACHE:-$HOME/.cache/detserve/perf_analyzer}
INTERVAL_MS=${INTERVAL_MS:-5000}  # perf_analyzer's measurement window
# Windows in a row within this many % of each other make a level stable. With perf_analyzer's
# default, 10 %, a trial run here found no stable window at concurrency 1 (2 s windows) on this
# shared 2-core machine, where other work runs beside the benchmark.
STABILITY=${STABILITY:-25}
DURATION_S=${DURATION_S:-15}      # detserve-bench's window per level
LOCK=/tmp/detserve/BENCH_LOCK
mkdir -p "$OUT" "$PA_CACHE"

fetch_perf_analyzer() {
  local pa="$PA_CACHE/tritonclient-2.48.0.data/data/bin/perf_analyzer"
  if [ ! -x "$pa" ]; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
      --python-version 3.11 tritonclient==2.48.0 -d "$PA_CACHE/wheels"
    "$PY" -m zipfile -e "$PA_CACHE"/wheels/tritonclient-2.48.0-*.whl "$PA_CACHE"
    chmod +x "$pa"
  fi
  if [ ! -e "$PA_CACHE/nvidia/cuda_runtime/lib/libcudart.so.12" ]; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
      --python-version 3.11 'nvidia-cuda-runtime-cu12>=12,<13' -d "$PA_CACHE/wheels"
    "$PY" -m zipfile -e "$PA_CACHE"/wheels/nvidia_cuda_runtime_cu12-*.whl "$PA_CACHE"
  fi
  if ! ldconfig -p | grep -q libb64.so.0d; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "perf_analyzer needs libb64.so.0d: apt-get install libb64-0d (as root)" >&2; exit 2
    fi
    apt-get install -y -q libb64-0d >/dev/null
  fi
  PERF_ANALYZER=$pa
  export LD_LIBRARY_PATH="$PA_CACHE/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

fetch_perf_analyzer
"$PERF_ANALYZER" --version 2>&1 | head -1 | tee "$OUT/perf_analyzer_version.txt"
"$PY" benchmarks/perf_analyzer_compare.py inputs "$OUT"  # images/*.jpg and input_data.json

while [ -e "$LOCK" ]; do echo "waiting for $LOCK: $(cat "$LOCK")"; sleep 15; done
echo "perf_analyzer cross-check (issue 17) $(date -u)" > "$LOCK"
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" || true; fi
  rm -f "$LOCK"
}
trap cleanup EXIT

"$BIN/detserve-server" --host 127.0.0.1 --port "$PORT" --metrics-port off --quiet \
  > "$OUT/server.log" 2>&1 &
SERVER_PID=$!
"$PY" benchmarks/perf_analyzer_compare.py wait "127.0.0.1:$PORT"

# The invocation a Triton user types: model by name, gRPC, concurrency 1 to 16 in steps of 3
# (1, 4, 7, 10, 13, 16), the JPEG files as real input data (BYTES, serialized: see
# perf_analyzer_compare.py).
"$PERF_ANALYZER" -m shapes -i grpc -u "127.0.0.1:$PORT" --concurrency-range 1:16:3 \
  --input-data "$OUT/input_data.json" --measurement-interval "$INTERVAL_MS" \
  --stability-percentage "$STABILITY" --max-trials 10 \
  -f "$OUT/perf_analyzer.csv" 2>&1 | tee "$OUT/perf_analyzer.log" \
  || echo "perf_analyzer: the full ladder failed (see perf_analyzer.log)"

# The comparison, interleaved so both see the same machine: at each concurrency perf_analyzer,
# detserve-bench, perf_analyzer again; the server's statistics (ModelStatistics) are read
# around each run, so each one's engine time per batch is known (compare.md).
stats() { "$PY" benchmarks/perf_analyzer_compare.py stats "127.0.0.1:$PORT" "$OUT/runs/$1.json"; }
mkdir -p "$OUT/runs"
for c in 1 4 16; do
  for run in a bench b; do
    stats "c${c}_${run}_before"
    if [ "$run" = bench ]; then
      "$BIN/detserve-bench" run --target "127.0.0.1:$PORT" --model shapes --mode closed \
        --concurrency "$c" --warmup-s 2 --duration-s "$DURATION_S" --inputs "$OUT/images" \
        --input-count 4 --out "$OUT/runs/c${c}_bench.json" --no-progress 2>&1 \
        | tee -a "$OUT/detserve_bench.log"
    else
      "$PERF_ANALYZER" -m shapes -i grpc -u "127.0.0.1:$PORT" --concurrency-range "$c:$c" \
        --input-data "$OUT/input_data.json" --measurement-interval "$INTERVAL_MS" \
        --stability-percentage "$STABILITY" --max-trials 10 \
        -f "$OUT/runs/c${c}_pa_${run}.csv" >> "$OUT/perf_analyzer_levels.log" 2>&1 \
        || echo "perf_analyzer c=$c ($run) failed: see perf_analyzer_levels.log"
    fi
    stats "c${c}_${run}_after"
  done
done

"$PY" benchmarks/perf_analyzer_compare.py compare "$OUT" | tee "$OUT/compare.md"
