#!/usr/bin/env bash
# The main job as a real federation: `fedbpt local` starts a uvicorn server, creates the job and runs 3 client
# processes on Dirichlet shards of SST-2, talking HTTP on 127.0.0.1; it prints the parties' progress and the
# job's rounds (the start round, the search rounds, the final round). Then the returned prompt is scored
# against zero-shot on all 872 dev sentences. A few minutes on a 2-core CPU. Logs, the event log and the
# prompt go to runs/demo/.
#   bash scripts/demo.sh [seed]     (default 42: the projection, the data split and the search)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-42}
bash scripts/setup.sh
run=runs/demo

# The job's spec defines the parties' data: party i of 3 holds shard i of a seeded Dirichlet split of 96
# training sentences (a quarter of each shard it keeps from its search to score prompts), and scores each
# prompt on its third of the first 300 dev sentences.
.venv/bin/fedbpt local --task sst2 --parties 3 --rounds 3 --iterations 4 --examples-per-party 32 \
    --eval-examples 300 --seed "$seed" --out "$run"
.venv/bin/fedbpt evaluate --prompt "$run/prompt.json"
