#!/usr/bin/env bash
# Parity: the same job spec run by Flower (`flwr run` on the Simulation Engine, scripts/flower.sh) and by
# `fedbpt simulate` ends in the same global state. SmolLM2-135M, SST-2, 3 nodes, 2 search rounds (docs/run.toml).
# Prints the rounds' figures of both, then a last line:
#   rounds=<R> parties=<N> max_abs_diff=<x>
# (the largest difference between the two runs' final global prompts, best prompts and steps).
#   bash scripts/flower_parity.sh [spec.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-docs/run.toml}
out=runs/flower-parity
mkdir -p "$out"
bash scripts/flower.sh simulation "$spec" "$out/flower.json" >"$out/flower.log" 2>&1 || {
    tail -30 "$out/flower.log"
    exit 1
}
grep "task=" "$out/flower.log" | sed 's/.*task=/flower:   task=/'
.venv/bin/fedbpt simulate --config "$spec" --out "$out/simulate.json" 2>"$out/simulate.log" | tail -1 |
    sed 's/^/simulate: /'
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path

import numpy as np

from fedbpt.protocol import GlobalState
from fedbpt.spec import from_dict

out = Path(sys.argv[1])
runs = [json.loads((out / name).read_text()) for name in ("flower.json", "simulate.json")]
flower, simulated = (GlobalState.from_dict(run["state"]) for run in runs)
diffs = [
    np.abs(flower.mean - simulated.mean).max(),
    np.abs(flower.best.mean - simulated.best.mean).max(),
    abs(flower.sigma - simulated.sigma),
]
same_rounds = [r["round"] for r in runs[0]["rounds"]] == [r["round"] for r in runs[1]["rounds"]]
losses = [[r["loss"] for r in run["rounds"]] for run in runs]
print(f"rounds closed: {len(runs[0]['rounds'])} (same: {same_rounds}); pooled losses flower {losses[0]}")
print(f"                                         simulate {losses[1]}")
spec = from_dict(runs[0]["spec"])
print(f"rounds={spec.federation.rounds} parties={spec.federation.parties} max_abs_diff={max(diffs):.3g}")
PY
