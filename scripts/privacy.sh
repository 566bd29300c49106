#!/usr/bin/env bash
# Accuracy against epsilon: the same small 10-party SST-2 federation as scripts/attack.sh, without privacy and
# with each party clipping its move to norm CLIP (and its losses to [0, 2]) and adding Gaussian noise of NOISE
# times the clip, for several noise multipliers. Prints one line per run: noise, epsilon at delta 1e-5, accuracy.
#   bash scripts/privacy.sh [seed] [noises] [clip]     (default: 42, "0.5 1 2", 2.0)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-42}
noises=${2:-0.5 1 2}
clip=${3:-2.0}
out=runs/privacy
mkdir -p "$out"
settings=(--task sst2 --parties 10 --examples-per-party 8 --rounds 3 --iterations 2 --population 4
    --eval-examples 300 --threads 2 --seed "$seed")
run() {  # name, extra flags...
    local file="$out/$1-$seed.json"
    shift
    [ -f "$file" ] && grep -q '"status": "finished"' "$file" && return
    .venv/bin/fedbpt simulate "${settings[@]}" "$@" --out "$file" >"${file%.json}.log" 2>&1
}
run off
for noise in $noises; do
    run "noise$noise" --privacy-clip "$clip" --privacy-noise "$noise"
done
.venv/bin/python - "$out" "$seed" "$noises" <<'PY'
import json, sys
from pathlib import Path

out, seed, noises = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
off = json.loads((out / f"off-{seed}.json").read_text())
print(f"privacy=off epsilon=inf accuracy={off['final_accuracy']:.4f} start={off['start_accuracy']:.4f}")
for noise in noises:
    run = json.loads((out / f"noise{noise}-{seed}.json").read_text())
    spent = run["rounds"][-1]["epsilon"]
    print(f"noise={noise} epsilon={spent:.3g} accuracy={run['final_accuracy']:.4f} best_round={run['best_round']}")
PY
