#!/usr/bin/env bash
# Makes the optional torchvision environment (default .venv-tv) for
# `python -m detserve.models.torchvision_export`. Never part of the test install: torchvision's
# detection models need its compiled ops, and the PyPI torchvision wheel pairs with the CUDA build
# of torch (torch 2.14.1 + torchvision 0.29.1, about 5.5 GB with the nvidia-* wheels). It installs
# from the local package cache and runs on the CPU. The project goes in with its base dependencies
# only (no extras: torch stays the one installed here), so `.venv-tv/bin/detserve-model
# export-torchvision` runs; the test install (.venv, torch 2.13 CPU) is never touched.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="${1:-$here/.venv-tv}"
python="${PYTHON:-python3.11}"
if [ ! -x "$env_dir/bin/python" ]; then
  "$python" -m venv "$env_dir"
fi
pip=("$env_dir/bin/pip" install -q --no-input)
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
# onnxscript: torch.onnx's default (dynamo) exporter imports it before falling back.
"${pip[@]}" onnxscript
"${pip[@]}" -e "$here"
# The suite's test runner (versions as in .venv): tests/engines/test_gpu_decode.py runs
# test_gpu_decode_tv.py (the real torchvision.io.decode_jpeg) here.
"${pip[@]}" "pytest==9.2.0" "pytest-asyncio==1.5.0" "pytest-timeout==2.4.0"
"$env_dir/bin/python" - <<'PY'
import torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, cuda build "
      f"{torch.version.cuda}, cuda available {torch.cuda.is_available()}")
PY
