#!/usr/bin/env bash
# The two set-up commands of the README, on a fresh machine with Python 3.11:
#   bash run.sh serve [detserve-server flags...]   installs what serving needs, serves the default model
#   bash run.sh test  [pytest args...]             installs everything the tests need, runs them
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DETSERVE_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

ensure_venv() {
  local spec=$1 stamp="$VENV/.installed-${2}"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # Reinstall only when pyproject.toml changed since the last install of this set.
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$spec"
    touch "$stamp"
  fi
}

case "${1:-}" in
  serve)
    shift
    ensure_venv . serve
    exec "$VENV/bin/detserve-server" "$@"
    ;;
  test)
    shift
    ensure_venv ".[dev]" dev
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: bash run.sh serve [detserve-server flags] | bash run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
