#!/usr/bin/env bash
# The Ray Serve tests: installs the 'ray' extra into the project's venv, then runs them
# (a local Ray instance with 2 CPUs; about 1.5 min on an idle 2-core host).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import ray.serve" 2>/dev/null || "$PY" -m pip install -q -e '.[ray]'
exec "$PY" -m pytest -q -p no:warnings tests/server/test_rayserve.py tests/server/test_rayserve_mapping.py "$@"
