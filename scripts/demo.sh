#!/usr/bin/env bash
# The main job as a real federation: a uvicorn server, a job, and 3 client processes on Dirichlet
# shards of SST-2 talking HTTP on 127.0.0.1; prints the job's rounds (the start round, the search
# rounds, the final round) and the returned prompt's accuracy against zero-shot. A few minutes on a
# 2-core CPU. Logs and the prompt go to runs/demo/.
#   bash scripts/demo.sh [seed]     (default 42: the projection, the data split and the search)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-42}
bash scripts/setup.sh
run=runs/demo
mkdir -p "$run"
rm -f "$run"/server.db*
port=${FEDBPT_DEMO_PORT:-8731}
export FEDBPT_SERVER="http://127.0.0.1:$port"
export FEDBPT_ADMIN_TOKEN=${FEDBPT_ADMIN_TOKEN:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')}
fedbpt=.venv/bin/fedbpt

FEDBPT_DB="$run/server.db" .venv/bin/uvicorn server.app:app --host 127.0.0.1 --port "$port" --log-level warning \
    >"$run/server.log" 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
.venv/bin/python - "$FEDBPT_SERVER" <<'PY'
import sys, time, httpx
for _ in range(300):
    try:
        if httpx.get(sys.argv[1] + "/readyz", timeout=1).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        time.sleep(0.1)
sys.exit("the server did not start; see runs/demo/server.log")
PY
echo "server up at $FEDBPT_SERVER (log: $run/server.log)"

# The job's spec defines the parties' data: party i of 3 holds shard i of a seeded Dirichlet split of 96
# training sentences (a quarter of each shard it keeps from its search to score prompts), and scores each
# prompt on its third of the first 300 dev sentences.
"$fedbpt" job create --task sst2 --parties 3 --rounds 3 --iterations 4 --examples-per-party 32 \
    --eval-examples 300 --seed "$seed" --tokens-out "$run/tokens.json"
job=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["job"])' "$run/tokens.json")
clients=()
for shard in 0 1 2; do
    token=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["tokens"][sys.argv[2]])' \
        "$run/tokens.json" "party-$shard")
    FEDBPT_TOKEN="$token" "$fedbpt" client --shard "$shard" --threads 1 >"$run/client-$shard.log" 2>&1 &
    clients+=($!)
    pids+=($!)
done
echo "3 clients training (logs: $run/client-*.log)"
for pid in "${clients[@]}"; do
    wait "$pid" || { echo "a client failed; see $run/client-*.log" >&2; exit 1; }
done

"$fedbpt" job history "$job"
"$fedbpt" job prompt "$job" --which best --out "$run/prompt.json"
"$fedbpt" evaluate --prompt "$run/prompt.json"
