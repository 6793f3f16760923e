#!/usr/bin/env bash
# Install megagrape into ./.venv (created if missing): CPU torch, pinned dependencies,
# then the package and its C++ extension (built once, here, never at run time).
# GPU machines: set TORCH_SPEC to the CUDA build you want, e.g. TORCH_SPEC="torch==2.13.0".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$VPY" -m pip install -q -r requirements.txt
"$VPY" -m pip install -q --no-build-isolation --no-deps -e .
"$VPY" -c "import torch, megagrape._C; print('megagrape installed: torch', torch.__version__)"
