#!/usr/bin/env bash
# The attack table: a 10-party SST-2 federation where 2 parties lie (fake-loss: a near-zero loss and a random
# mean; negate: the opposite of their honest move; quantized: honest parties on a q4_0 copy of the model),
# under each robust rule, against the attack-free run.
# Prints one line per run, then for the robust default its worst attack:
#   attack=<name> clean=<acc> attacked=<acc> drop_points=<x>
#   bash scripts/attack.sh [seeds] [rules] [cell]     (default: "42", "none clip trimmed cross" and small)
# cell small: 10 parties x 8 examples, 3 rounds of 2 iterations, population 4, 300 held-out rows (3-5 minutes
# per run on 2 cores); cell issue: the job spec's defaults (10 parties x 16 examples, 8 rounds of 4 iterations,
# population 5) scored on all 872 dev rows at the start and the end, on 1 torch thread. Finished runs are kept
# in runs/attack (small) or runs/attack-issue and skipped when the script runs again.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-42}
rules=${2:-none clip trimmed cross}
default_rule=$(.venv/bin/python -c 'from fedbpt.spec import JobSpec; print(JobSpec().federation.robust)')
cell=${3:-small}
case $cell in
    small) out=runs/attack
        settings=(--task sst2 --parties 10 --examples-per-party 8 --rounds 3 --iterations 2 --population 4
            --eval-examples 300 --threads 2) ;;
    issue) out=runs/attack-issue
        settings=(--task sst2 --parties 10 --eval-every 1000 --threads 1) ;;
    *) echo "error: cell must be small or issue, got '$cell'" >&2; exit 2 ;;
esac
mkdir -p "$out"
for seed in $seeds; do
    for rule in $rules; do
        for attack in none fake-loss negate quantized; do
            file="$out/$rule-$attack-$seed.json"
            [ -f "$file" ] && grep -q '"status": "finished"' "$file" && continue
            extra=()
            [ "$attack" != none ] && extra=(--attack "$attack" --attackers 2)
            .venv/bin/fedbpt simulate "${settings[@]}" --seed "$seed" --robust "$rule" "${extra[@]}" --out "$file" \
                >"$out/$rule-$attack-$seed.log" 2>&1
        done
    done
done
.venv/bin/python - "$out" "$seeds" "$rules" "$default_rule" <<'PY'
import json, sys
from pathlib import Path

out, seeds, rules, default = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
ATTACKS = ("fake-loss", "negate", "quantized")
def accuracy(rule, attack):
    runs = [json.loads((out / f"{rule}-{attack}-{seed}.json").read_text()) for seed in seeds]
    return sum(run["final_accuracy"] for run in runs) / len(runs)

for rule in rules:
    clean = accuracy(rule, "none")
    cells = "  ".join(f"{attack} {accuracy(rule, attack):.4f}" for attack in ATTACKS)
    print(f"robust={rule:8s} clean {clean:.4f}  {cells}  (seeds {' '.join(seeds)})")
rule = default if default in rules else rules[0]
clean = accuracy(rule, "none")
worst = min(ATTACKS, key=lambda attack: accuracy(rule, attack))
attacked = accuracy(rule, worst)
print(f"attack={worst} clean={clean:.4f} attacked={attacked:.4f} drop_points={100 * (clean - attacked):.2f}")
PY
