#!/usr/bin/env bash
# The device benchmark in one command; see benchmarks/gpu/README.md.
#   OUT=/path/to/results bash benchmarks/gpu/run_device.sh            # on the GPU machine
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu_dry bash benchmarks/gpu/run_device.sh   # CPU dry run
# Env: OUT (required), DEVICE (cuda), QUICK (0), BUDGET_S (python part, 420), WHEELS (.whl),
#      SITE (/tmp/site), PY (python3), CLIENTS (4 load processes).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${OUT:?set OUT to the results folder}"
DEVICE="${DEVICE:-cuda}" QUICK="${QUICK:-0}" BUDGET_S="${BUDGET_S:-420}"
WHEELS="${WHEELS:-.whl}" SITE="${SITE:-/tmp/site}" PY="${PY:-python3}" CLIENTS="${CLIENTS:-4}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
t0=$SECONDS
echo "== $(date -u +%FT%TZ) detserve device benchmark DEVICE=$DEVICE QUICK=$QUICK BUDGET_S=$BUDGET_S"
# The device reaches no registry: everything missing there comes as carried wheels.
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || { echo "== wheel install failed"; exit 3; }
# detserve itself is this working tree (no stale wheel): link its folders as the subpackages.
mkdir -p "$SITE/detserve"
for d in protos engines server client models; do
    rm -rf "${SITE:?}/detserve/$d" && ln -s "$PWD/$d" "$SITE/detserve/$d"
done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
echo "== wheels + detserve ready in $((SECONDS - t0)) s"
"$PY" - <<'PY' || { echo "== import check failed"; exit 4; }
import grpc, google.protobuf, structlog, hdrh.histogram, asyncio_throttle, grpc_health.v1.health
import torch, numpy, cv2, yaml, prometheus_client, matplotlib, simplejpeg, aiohttp
import detserve.server.app, detserve.client.bench.loads, detserve.engines.torch_cuda
print("imports ok: grpcio", grpc.__version__, "protobuf", google.protobuf.__version__,
      "torch", torch.__version__, "cuda", torch.cuda.is_available())
PY
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
fi
quick=(); [ "$QUICK" = 1 ] && quick=(--quick)
# The Python part ends by its own budget (results rewritten after every phase); the kill bound
# keeps the whole script under 8 minutes at the default budget even if it hangs.
timeout -k 5 $(( ${BUDGET_S%.*} + 30 )) "$PY" benchmarks/gpu/bench_device.py --out "$OUT" \
    --device "$DEVICE" --budget-s "$BUDGET_S" --clients "$CLIENTS" "${quick[@]}"
rc=$?
echo "== bench exit $rc after $((SECONDS - t0)) s"
ls -la "$OUT"
exit $rc
