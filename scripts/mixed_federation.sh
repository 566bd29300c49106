#!/usr/bin/env bash
# Evidence for edge clients: the same server job run twice with the same seeds and shards, once with
# 4 transformers clients and once with 2 transformers clients + a Q8_0 and a Q4_0 llama.cpp edge client
# (python -m clients.edge). Both final prompts are scored centrally by `fedbpt evaluate` (transformers).
# Logs go to runs/mixed/<seed>/<job kind>/. About 15 minutes on a 2-core CPU (3 rounds).
#   bash scripts/mixed_federation.sh [rounds] [local iterations] [quantizations of parties 2 and 3] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
iterations=${2:-4}
read -r -a edge_quants <<<"${3:-q8_0 q4_0}"
seed=${4:-42}
runs=runs/mixed/$seed
py=.venv/bin/python
fedbpt=.venv/bin/fedbpt
for quant in "${edge_quants[@]}"; do "$fedbpt" models prepare smollm2-135m --quant "$quant"; done
port=${FEDBPT_MIXED_PORT:-8741}
export FEDBPT_SERVER="http://127.0.0.1:$port"
export FEDBPT_ADMIN_TOKEN=$($py -c 'import secrets; print(secrets.token_urlsafe(24))')
mkdir -p "$runs"
rm -f "$runs"/server.db*
FEDBPT_DB=$runs/server.db .venv/bin/uvicorn server.app:app --host 127.0.0.1 --port "$port" \
    --log-level warning >"$runs/server.log" 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
$py scripts/_common.py wait-ready "$FEDBPT_SERVER"

run_job() {  # run_job <name> <kind of party 0..3>...
    local name=$1 dir=$runs/$1
    shift
    mkdir -p "$dir"
    "$fedbpt" job create --task sst2 --rounds "$rounds" --parties 4 --iterations "$iterations" \
        --examples-per-party 16 --eval-examples 200 --seed "$seed" --tokens-out "$dir/tokens.json"
    local job clients=() shard=0
    job=$($py -c 'import json, sys; print(json.load(open(sys.argv[1]))["job"])' "$dir/tokens.json")
    for kind in "$@"; do
        export FEDBPT_TOKEN=$($py -c 'import json, sys; print(json.load(open(sys.argv[1]))["tokens"][sys.argv[2]])' \
            "$dir/tokens.json" "party-$shard")
        local data=(--shard "$shard" --threads 1)
        if [ "$kind" = transformers ]; then
            "$fedbpt" client "${data[@]}" >"$dir/client-$shard.log" 2>&1 &
        else
            $py -m clients.edge --quant "$kind" "${data[@]}" >"$dir/client-$shard.log" 2>&1 &
        fi
        clients+=($!)
        pids+=($!)
        shard=$((shard + 1))
    done
    for pid in "${clients[@]}"; do wait "$pid" || { echo "a client failed; see $dir/client-*.log" >&2; exit 1; }; done
    "$fedbpt" job history "$job" | tee "$dir/history.txt"
    "$fedbpt" job prompt "$job" --which best --out "$dir/prompt.json"
    "$fedbpt" evaluate --prompt "$dir/prompt.json" | tee "$dir/evaluate.txt"
}

echo "== job 1: 4 transformers clients"
run_job transformers transformers transformers transformers transformers
echo "== job 2: 2 transformers clients and 2 edge clients (llama.cpp: ${edge_quants[*]})"
run_job mixed transformers transformers "${edge_quants[@]}"
only=$(awk '/learned prompt/ {print $3}' "$runs/transformers/evaluate.txt")
mixed=$(awk '/learned prompt/ {print $3}' "$runs/mixed/evaluate.txt")
$py -c 'import sys, os; a, b = map(float, sys.argv[2:]); print(f"seed={sys.argv[1]} transformers_only={a:.4f} mixed={b:.4f} difference_points={100 * (b - a):+.2f} load_average={os.getloadavg()[0]:.2f}")' "$seed" "$only" "$mixed"
