"""Regenerate the committed Python stubs of detection.proto with grpcio-tools.

The proto is compiled from a temporary tree shaped `detserve/protos/detection.proto`, so the
generated imports read `from detserve.protos import detection_pb2`, which resolves once installed.
Run: `python -m detserve.protos.generate` (needs the `dev` extra).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "detection.proto"
GENERATED = ("detection_pb2.py", "detection_pb2.pyi", "detection_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile detection.proto into `out_dir`; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    import google.rpc

    rpc_root = Path(next(iter(google.rpc.__path__))).parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "detserve" / "protos"
        src.mkdir(parents=True)
        shutil.copy(HERE / PROTO, src / PROTO)
        args = [
            "protoc",
            f"-I{tmp}",
            f"-I{include}",
            f"-I{rpc_root}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"detserve/protos/{PROTO}",
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            shutil.copy(src / name, out_dir / name)
            written.append(out_dir / name)
    return written


def main() -> int:
    for path in generate(HERE):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
