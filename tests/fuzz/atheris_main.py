"""One atheris (libFuzzer) run of one target of targets.py:

    python tests/fuzz/atheris_main.py TARGET [CORPUS_DIR] [libFuzzer flags, e.g. -max_total_time=60]

The detserve modules the targets reach are imported under atheris' instrumentation, so libFuzzer
is guided by (and reports, as `cov`) the Python branches they take. run.py drives this.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["detserve", "targets"]):
    import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: atheris_main.py {{{','.join(targets.TARGETS)}}} [CORPUS] [FLAGS]")
    target = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
