#!/usr/bin/env bash
# Set up, lint, and run the test suite (slow real-model runs are behind `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
