"""`detserve-model export-torchvision`: a torchvision detector as a `torchvision`-format package.

torchvision is not in the test install: the command runs from the environment that
`bash models/torchvision_env.sh` makes (`.venv-tv/bin/detserve-model export-torchvision ...`);
elsewhere it says so in one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ARCH_NAMES = ("fasterrcnn_resnet50_fpn", "ssdlite320_mobilenet_v3_large")
NEEDS_ENV = ("this needs torchvision (module 'torchvision' is not installed here): run "
             "`bash models/torchvision_env.sh`, then `.venv-tv/bin/detserve-model "
             "export-torchvision ...`")  # fmt: skip


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export-torchvision",
        help="export a torchvision detector (random weights) with boxes, labels, scores outputs",
        description="Export a torchvision detector with random weights (none can be fetched "
        "here) by torch.onnx.export(..., output_names=['boxes', 'labels', 'scores'], "
        "opset_version=17), check it against PyTorch in ONNX Runtime and write a package with "
        "output.format 'torchvision'. Needs the .venv-tv environment (models/torchvision_env.sh).",
    )
    p.add_argument("arch", choices=ARCH_NAMES)
    p.add_argument("--out", required=True, type=Path, help="package directory to write")
    p.add_argument("--input-size", type=int, default=320)
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    try:
        import torchvision  # noqa: F401  (only to tell a missing environment apart)
    except ModuleNotFoundError:
        print(f"detserve-model export-torchvision: error: {NEEDS_ENV}", file=sys.stderr)
        return 2
    from detserve.models.torchvision_export import run

    try:
        facts = run(args.arch, args.input_size, args.out)
    except ValueError as exc:
        print(f"detserve-model export-torchvision: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(facts))
    return 0
