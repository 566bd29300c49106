#!/usr/bin/env bash
# The main job: set up, then a federated FedBPT run of 5 parties on SST-2 with SmolLM2-135M.
# A few minutes on a 2-core CPU (the first run also converts the model once, about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedbpt simulate --parties 5 --rounds 3 --local-iterations 4 --examples-per-party 16 \
    --partition dirichlet --alpha 1.0 --eval-examples 400 --threads 2 --out runs/main.json "$@"
