#!/bin/sh
# Builds {{ wasm }} with componentize-py as pinned in pyproject.toml (from PyPI), in .venv.
set -eu
cd "$(dirname "$0")"
command -v python3 >/dev/null || { echo "build.sh: Python 3.11+ is needed" >&2; exit 1; }
if [ ! -x .venv/bin/componentize-py ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check $(.venv/bin/python -c \
    'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
fi
.venv/bin/componentize-py --wit-path wit --world step componentize --python-path . app -o {{ wasm }}
