#!/usr/bin/env bash
# Set up .venv (first run only) and run the default training flow; extra arguments
# are Hydra overrides, e.g. `bash scripts/train.sh trainer.steps=20 rollout=hf`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/siirl train "$@"
