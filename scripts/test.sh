#!/usr/bin/env bash
# Set up .venv with the test extras (first run only) and run the whole suite,
# slow end-to-end tests included; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -ra "$@"
