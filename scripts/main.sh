#!/usr/bin/env bash
# The main job: set up, then a real federation (server + 3 client processes over HTTP) on SST-2 with
# SmolLM2-135M. See scripts/demo.sh; `fedbpt simulate` runs the same algorithm in one process.
set -euo pipefail
exec bash "$(dirname "$0")/demo.sh" "$@"
