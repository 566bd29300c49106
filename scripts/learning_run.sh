#!/usr/bin/env bash
# The documented learning run: SST-2, 10 parties, Dirichlet alpha 1.0, FedBPT against FedAvg-BBT,
# both scored on the full SST-2 dev set (872) with zero-shot measured in the same runs.
# Each run takes about 20 minutes on a 2-core CPU. Extra arguments go to both runs (e.g. --rounds 20).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/learning}
mkdir -p "$out"
common=(--task sst2 --parties 10 --partition dirichlet --alpha 1.0 --examples-per-party 16
        --population 5 --local-iterations 4 --perturb-rate 0.5
        --rounds 6 --eval-every 2 --threads 2)
for aggregator in fedbpt fedavg; do
    .venv/bin/fedbpt simulate "${common[@]}" --aggregator "$aggregator" --out "$out/$aggregator.json" "$@"
done
.venv/bin/python scripts/compare.py "$out/fedbpt.json" "$out/fedavg.json"
