#!/usr/bin/env bash
# Set up the virtual environment if needed, then run the whole pipeline on the tiny preset (CPU, minutes).
# Results land in runs/tiny/. This executes model-generated code in prmlab's sandbox (see docs/safety.md).
# Extra arguments go to `prmlab pipeline` (e.g. --preset, --seed, --run-dir, --set labels.k=4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/prmlab pipeline --allow-execution "$@"
