#!/usr/bin/env bash
# The YOLOv8 packages of the model-selection table: build n/s/m/x from Ultralytics' yaml (random
# weights: speed and size only), export with Ultralytics' exporter in .venv-yolo
# (models/ultralytics_env.sh), and import each ONNX file with the test install's
# `detserve-model import` (COCO names). benchmarks/model_families.sh runs it when they are
# missing and times them with the other rows.
#   benchmarks/yolo_families.sh [WORK]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"  # relative paths, so the command recorded in results.json is the repo's own
work="${1:-runs/yolo}"
yolo_py="${YOLO_PYTHON:-$here/.venv-yolo/bin/python}"
if [ ! -x "$yolo_py" ]; then
  echo "yolo_families: no $yolo_py; make it with models/ultralytics_env.sh" >&2
  exit 2
fi
"$yolo_py" benchmarks/yolo_export.py --out "$work" n s m x
for s in n s m x; do
  .venv/bin/detserve-model import "$work/yolov8$s.onnx" --names coco --name "yolov8$s" \
    --out "$work/yolov8$s" --force
  cp "$work/yolov8$s.export.json" "$work/yolov8$s/export.json"
done
