#!/usr/bin/env bash
# Makes the optional Ultralytics environment (default .venv-yolo) for benchmarks/yolo_export.py,
# which builds YOLOv8 n/s/m/x from Ultralytics' yaml (random weights) and exports them to ONNX.
# Never part of the test install (.venv is never touched). torch is pinned to the CPU build in
# the local wheel cache (2.13.0+cpu, the test install's); an unpinned torch would pull the CUDA
# build. torchvision goes in --no-deps, paired with torch 2.13 (0.28.0): Ultralytics 8.3.0 reads
# its version at import, and export never calls its ops. ULTRALYTICS_WHEEL: a downloaded wheel
# (default /tmp/ul/ultralytics-8.3.0-py3-none-any.whl when it exists, else PyPI's 8.3.0).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="${1:-$here/.venv-yolo}"
python="${PYTHON:-python3.11}"
wheel="${ULTRALYTICS_WHEEL:-/tmp/ul/ultralytics-8.3.0-py3-none-any.whl}"
[ -f "$wheel" ] || wheel="ultralytics==8.3.0"
if [ ! -x "$env_dir/bin/python" ]; then
  "$python" -m venv "$env_dir"
fi
pip=("$env_dir/bin/pip" install -q --no-input)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" --no-deps "torchvision==0.28.0"
"${pip[@]}" --no-deps "$wheel"
# Ultralytics' own requirements less torch/torchvision (above); onnx for its ONNX export,
# onnxslim for its simplify step, onnxruntime for the parity check in yolo_export.py.
"${pip[@]}" "torch==2.13.0" "numpy<2" matplotlib opencv-python-headless pillow pyyaml requests \
  scipy tqdm psutil py-cpuinfo pandas seaborn "ultralytics-thop>=2.0.0" onnx onnxslim onnxruntime
"$env_dir/bin/python" - <<'PY'
import onnx, onnxruntime, torch, ultralytics
print(f"torch {torch.__version__}, ultralytics {ultralytics.__version__}, onnx {onnx.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, cuda build {torch.version.cuda}")
PY
