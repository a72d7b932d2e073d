#!/usr/bin/env bash
# R3's GPU check: the transformers engine with a LoRA adapter per request, a reflect-retry request
# through the app, one GRPO step and the gate, on CUDA; one line per check (scripts/gpu_check.py
# says what each does). Needs torch, transformers, peft and accelerate; R3's other dependencies
# come from .venv here, or on a machine without a package index from the wheels in .whl/
# (bash scripts/gpu-wheels.sh makes them; they travel with the working tree). No network, no model.
#
#   bash scripts/gpu-check.sh                 # on a GPU
#   bash scripts/gpu-check.sh --device cpu    # the same checks on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import fastapi, trl" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/r3-site .whl/*.whl
  export PYTHONPATH=/tmp/r3-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
