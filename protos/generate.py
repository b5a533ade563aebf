"""Regenerate the committed Python stubs of the protos with grpcio-tools.

Each proto is compiled from a temporary tree shaped `detserve/protos/<name>.proto`, so the
generated imports read `from detserve.protos import detection_pb2`, which resolves once installed.
inference.proto (the Open Inference Protocol) is registered into a descriptor pool of its own:
its `inference.*` symbols are also defined by Triton's client (tritonclient), and two files
defining one symbol in the default pool cannot both be imported in one process.
Run: `python -m detserve.protos.generate` (needs the `dev` extra).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("detection.proto", "inference.proto")
GENERATED = tuple(f"{Path(p).stem}{suffix}" for p in PROTOS
                  for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
OWN_POOL = ("inference_pb2.py",)
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def _own_pool(path: Path) -> None:
    text = path.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise RuntimeError(f"{path.name}: expected one {DEFAULT_POOL!r} to replace")
    path.write_text(text.replace(DEFAULT_POOL, PRIVATE_POOL))


def generate(out_dir: Path) -> list[Path]:
    """Compile the protos into `out_dir`; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    import google.rpc

    rpc_root = Path(next(iter(google.rpc.__path__))).parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "detserve" / "protos"
        src.mkdir(parents=True)
        for proto in PROTOS:
            shutil.copy(HERE / proto, src / proto)
            args = [
                "protoc",
                f"-I{tmp}",
                f"-I{include}",
                f"-I{rpc_root}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                f"detserve/protos/{proto}",
            ]
            code = protoc.main(args)
            if code != 0:
                raise RuntimeError(f"protoc failed on {proto} with exit code {code}")
        for name in OWN_POOL:
            _own_pool(src / name)
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
