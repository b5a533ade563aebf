"""`detserve-model`: the model toolchain's command line.

Each subcommand lives in its own module exposing `register(subparsers)`, so helpers working on
different subcommands never edit the same file. A module that does not exist yet is skipped;
any other import error is a real bug and propagates.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

SUBCOMMAND_MODULES = (
    "detserve.models.cli_train",
    "detserve.models.cli_eval",
    "detserve.models.cli_precision",
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
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
