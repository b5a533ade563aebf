"""`detserve-model`: the model toolchain's command line.

Each subcommand lives in its own module exposing `register(subparsers)`, so helpers working on
different subcommands never edit the same file. A module that does not exist yet is skipped;
any other import error is a real bug and propagates. A subcommand that needs a module of an
optional extra (torch for train, NNCF for quantize --engine openvino, ...) that is not installed
exits 2 with one line naming the extra to install (models/extras.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from detserve.models.extras import missing_extra

SUBCOMMAND_MODULES = (
    "detserve.models.cli_train",
    "detserve.models.cli_eval",
    "detserve.models.cli_precision",
    "detserve.models.cli_report",
    "detserve.models.cli_torchvision",
    "detserve.models.cli_tflite",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detserve-model",
        description="Train, export, evaluate and package detserve's detection models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None:
            raise
        print(f"detserve-model {args.command}: error: {message}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
