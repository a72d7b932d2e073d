#!/usr/bin/env bash
# The wheels scripts/gpu-check.sh needs on a GPU machine that has torch, transformers, peft and
# accelerate (and the common scientific stack) but no package index: R3's other dependencies, at
# the versions of this checkout's .venv, for CPython 3.12 on x86-64 Linux, downloaded into .whl/
# (about 12 MB). Run it here, where PyPI is reachable; .whl/ then travels with the working tree and
# gpu-check.sh installs it there.
#
#   bash scripts/gpu-wheels.sh [PYTHON_VERSION]      (default 3.12, the GPU image's python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${1:-3.12}
PYTHON=${PYTHON:-.venv/bin/python}
# Not on the GPU image (it has numpy, pandas, pyarrow, aiohttp, xxhash, httpx, jinja2, rich, typer,
# regex, prometheus-client, ...): the app's, the store's and the trainer's own dependencies.
PACKAGES=(fastapi starlette annotated-doc pydantic pydantic_core pydantic-settings python-dotenv typing-inspection
  annotated-types sqlalchemy greenlet alembic mako aiosqlite redis orjson jsonschema jsonschema-specifications
  referencing rpds-py itsdangerous python-multipart trl datasets dill multiprocess)
pinned=()
for package in "${PACKAGES[@]}"; do
  pinned+=("$package==$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")")
done
rm -rf .whl && mkdir .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pinned[@]}"
du -sh .whl
