#!/usr/bin/env bash
# Makes the optional Ultralytics environment (default .venv-yolo) for benchmarks/yolo_export.py,
# which builds YOLOv8 n/s/m/x from Ultralytics' yaml (random weights) and exports them to ONNX.
# Never part of the test install (.venv is never touched). torch is pinned to the CPU build in
# the local wheel cache (2.13.0+cpu, the test install's); an unpinned torch would pull the CUDA
# build. torchvision goes in --no-deps, paired with torch 2.13 (0.28.0): Ultralytics reads its
# version at import, and export never calls its ops. Ultralytics 8.3.100, not 8.3.0: 8.3.0 builds
# yolov8*.yaml with YOLO11's depthwise class branch (yolov8n: 2.72 M params, 7.0 GFLOPs, not
# YOLOv8's 3.15 M / 8.7); 8.3.100 restores it for v8 yamls (Detect.legacy), and
# unlike 8.3.2xx (SAM 3) it imports torchvision only where used: PyPI's 0.28.0 is a CUDA build
# whose ops do not load on torch 2.13+cpu.
# ULTRALYTICS_WHEEL: a downloaded wheel of it (default: PyPI's ultralytics==8.3.100).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="${1:-$here/.venv-yolo}"
python="${PYTHON:-python3.11}"
wheel="${ULTRALYTICS_WHEEL:-ultralytics==8.3.100}"
if [ ! -x "$env_dir/bin/python" ]; then
  "$python" -m venv "$env_dir"
fi
pip=("$env_dir/bin/pip" install -q --no-input)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" --no-deps "torchvision==0.28.0"
# Ultralytics' own requirements less torch/torchvision (above); onnx for its ONNX export,
# onnxslim for its simplify step, onnxruntime for the parity check in yolo_export.py.
"${pip[@]}" "torch==2.13.0" matplotlib opencv-python-headless pillow pyyaml requests scipy \
  tqdm psutil py-cpuinfo pandas seaborn "ultralytics-thop>=2.0.0" onnx onnxslim onnxruntime
# Last, so a half-made environment has no ultralytics (tests/models/test_yolo_families.py skips).
"${pip[@]}" --no-deps "$wheel"
"$env_dir/bin/python" - <<'PY'
import onnx, onnxruntime, torch, ultralytics
print(f"torch {torch.__version__}, ultralytics {ultralytics.__version__}, onnx {onnx.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, cuda build {torch.version.cuda}")
PY
