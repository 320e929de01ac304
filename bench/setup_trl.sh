#!/usr/bin/env bash
# TRL in its own virtual environment (its pins differ from siirl's), for bench/trl_compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRL_VENV:-.venv-trl}
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import trl" 2>/dev/null; then
  ${PYTHON:-python3} -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==2.13.0" "trl==1.16.0" "transformers>=4.56,<5.20" \
    2> >(grep -v -e "is ignored: it is neither" >&2)
fi
echo "$VENV"
