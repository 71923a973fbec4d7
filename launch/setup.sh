#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the pinned, tested requirements, and
# install lmim itself into it (editable: the `lmim-*` commands run this checkout's code).
#   bash launch/setup.sh            # uses python3.11 if present, else python3
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
# Every dependency is pinned above; the package itself adds only its code and console scripts.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
