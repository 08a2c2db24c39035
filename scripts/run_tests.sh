#!/usr/bin/env bash
# Set up the virtual environment if needed, then run the whole test suite. Extra arguments go to pytest
# (e.g. `bash scripts/run_tests.sh -m "not slow"` while iterating).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
