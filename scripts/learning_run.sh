#!/usr/bin/env bash
# The documented learning run: SST-2, 10 parties, Dirichlet alpha 1.0, FedBPT against FedAvg-BBT,
# both scored on the full SST-2 dev set (872) with zero-shot measured in the same runs.
# FedBPT runs 14 rounds (about 40 minutes on a 2-core CPU: the 20-minute figure is read off its curve),
# FedAvg-BBT 7 rounds (about 20 minutes). Extra arguments go to both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${OUT:-runs/learning}
mkdir -p "$out"
common=(--task sst2 --parties 10 --partition dirichlet --alpha 1.0 --examples-per-party 16
        --population 5 --local-iterations 4 --perturb-rate 0.5
        --eval-every 2 --threads 2)
.venv/bin/fedbpt simulate "${common[@]}" --aggregator fedbpt --rounds 14 --out "$out/fedbpt.json" "$@"
.venv/bin/fedbpt simulate "${common[@]}" --aggregator fedavg --rounds 7 --out "$out/fedavg.json" "$@"
.venv/bin/python scripts/compare.py "$out/fedbpt.json" "$out/fedavg.json"
