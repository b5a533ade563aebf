#!/usr/bin/env bash
# Makes the optional TFLite environment (default .venv-tflite) that `detserve-model export-tflite`
# runs its converter and interpreter in (models/tflite_runner.py). Never part of the test install:
# onnx2tf pins its whole toolchain exactly (tensorflow 2.19, numpy 1.26, onnx 1.19, protobuf
# 4.25, ...), which would move the test install's numpy/onnx/protobuf. The pins below are
# onnx2tf 1.29.24's own (its wheel metadata). tensorflow, not tensorflow-cpu: tf-keras and
# onnx2tf require the name `tensorflow`, and with tensorflow-cpu pip installs that too, over the
# same files; the Linux tensorflow wheel pulls no CUDA libraries (only its [and-cuda] extra
# does) and runs on the CPU. PyPI, not the local cache: none of these is cached here.
# detserve itself is not installed here: the runner needs only numpy, onnx2tf,
# tensorflow and ai-edge-litert; preprocessing, decoding, NMS and mAP stay in the main .venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="${1:-$here/.venv-tflite}"
python="${PYTHON:-python3.11}"
if [ ! -x "$env_dir/bin/python" ]; then
  "$python" -m venv "$env_dir"
fi
pip=("$env_dir/bin/pip" install -q --no-input)
"${pip[@]}" "tensorflow==2.19.0" "tf-keras==2.19.0" "numpy==1.26.4" "onnx==1.19.1" \
  "onnxruntime==1.23.0" "onnxsim==0.4.36" "onnxoptimizer==0.4.2" "onnx-graphsurgeon==0.5.8" \
  "simple-onnx-processing-tools==1.1.32" "sng4onnx" "ai-edge-litert==2.1.0" "psutil==5.9.5" \
  "protobuf==4.25.5" "h5py==3.11.0" "ml-dtypes==0.5.1" "flatbuffers==25.12.19"
# --no-deps: onnx2tf's requirements are the pins above, except opencv-python and requests, which
# the conversion path does not use (its calibration reads .npy files).
"${pip[@]}" --no-deps "onnx2tf==1.29.24"
"$env_dir/bin/python" - <<'PY'
import importlib.metadata as md
import ai_edge_litert.interpreter  # noqa: F401  (the interpreter the checks run on)
import onnx2tf  # noqa: F401
import tensorflow as tf
print(", ".join(f"{p} {md.version(p)}" for p in
                ("onnx2tf", "tensorflow", "tf-keras", "ai-edge-litert", "onnx", "numpy")),
      f"(tf.__version__ {tf.__version__})")
PY
