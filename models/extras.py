"""Which optional extra (pyproject.toml `[project.optional-dependencies]`) provides a module.

A command that needs an optional module reports the extra to install in one line instead of a
ModuleNotFoundError traceback: `bash run.sh serve` installs the base dependencies only.
"""

from __future__ import annotations

# Top-level module -> the lightest extra that installs it.
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "train",
    "onnxscript": "train",
    "nncf": "openvino",
    "onnxconverter_common": "precision",
    "onnx_graphsurgeon": "precision",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
}


def _missing_module(exc: BaseException | None) -> str | None:
    """The known optional module `exc` (or the error it was raised from) failed to import."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            top = exc.name.split(".")[0]
            if top in EXTRA_OF_MODULE:
                return top
        exc = exc.__cause__
    return None


def missing_extra(exc: BaseException) -> str | None:
    """One line naming the extra to install, when `exc` comes from a missing optional module;
    None for any other error."""
    module = _missing_module(exc)
    if module is None:
        return None
    extra = EXTRA_OF_MODULE[module]
    return (f"this needs the optional '{extra}' extra (module '{module}' is not installed): "
            f"pip install -e '.[{extra}]'")


def explain(exc: BaseException) -> str:
    """`exc` as one line for a command-line error: the extra to install where that is the
    cause, else the error's own message."""
    return missing_extra(exc) or str(exc)
