#!/usr/bin/env bash
# The whole model-selection table in one run (benchmarks/model_families.py), from the repo root:
#   bash benchmarks/model_families.sh [model_families.py args...]
# 1. builds what is missing, in the environments that can build it: the YOLOv8 n/s/m/x packages
#    (benchmarks/yolo_families.sh, .venv-yolo) and the torchvision packages
#    (detserve-model export-torchvision, .venv-tv); present ones are reused as they are;
# 2. checks the torchvision exports against PyTorch (benchmarks/tv_parity.py, .venv-tv), into
#    the results folder; without .venv-tv the exports' own parity figures stand;
# 3. times every row and path (.venv/bin/python benchmarks/model_families.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"  # relative paths, so the command recorded in results.json is the repo's own
out=benchmarks/results/model_families
tv_py=.venv-tv/bin/python
for s in n s m x; do
  if [ ! -f "runs/yolo/yolov8$s/export.json" ]; then
    bash benchmarks/yolo_families.sh runs/yolo
    break
  fi
done
for spec in ssdlite320_mobilenet_v3_large:ssdlite_320 fasterrcnn_resnet50_fpn:fasterrcnn_320; do
  if [ ! -f "runs/tv/${spec#*:}/export.json" ]; then
    if [ ! -x "$tv_py" ]; then
      echo "model_families: no runs/tv/${spec#*:} and no $tv_py; make it with models/torchvision_env.sh" >&2
      exit 2
    fi
    .venv-tv/bin/detserve-model export-torchvision "${spec%%:*}" --out "runs/tv/${spec#*:}"
  fi
done
parity=()
if [ -x "$tv_py" ]; then
  "$tv_py" benchmarks/tv_parity.py runs/tv/ssdlite_320 runs/tv/fasterrcnn_320 \
    --out "$out/tv_parity.json"
  parity=(--tv-parity "$out/tv_parity.json")
fi
.venv/bin/python benchmarks/model_families.py --out "$out" "${parity[@]}" "$@"
