#!/usr/bin/env bash
# FedBPT as a Flower app on one machine, from a job spec file (the one `fedbpt simulate --config` reads):
#   bash scripts/flower.sh simulation [spec.toml] [out.json]
#       Flower's Simulation Engine: a SuperLink in simulation mode, then `flwr run` with one virtual node per party.
#   bash scripts/flower.sh deployment [spec.toml] [out.json] [edge model]
#       Flower's Deployment Engine: a SuperLink and one SuperNode process per party on 127.0.0.1, the last one an
#       edge node on llama.cpp, then `flwr run` against it. The edge model is a quant of the spec's packaged model
#       (default q8_0, prepared once), a .gguf file, or none (no edge node).
# The spec defaults to docs/run.toml, the results (a prompt file) to runs/flower/<engine>.json. Flower's own
# files (its config, the installed app, the SuperLink's state, the processes' logs) go to $FLWR_HOME, by default
# runs/flower/home rather than ~/.flwr.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:?usage: bash scripts/flower.sh simulation|deployment [spec.toml] [out.json] [edge model]}
spec=$(realpath "${2:-docs/run.toml}")
out=$(realpath -m "${3:-runs/flower/$engine.json}")
edge=${4:-q8_0}
export PATH="$PWD/.venv/bin:$PATH" FLWR_HOME=${FLWR_HOME:-$PWD/runs/flower/home}
export FEDBPT_DATA=${FEDBPT_DATA:-$(python -c 'from fedbpt.data import data_root; print(data_root())')}
parties=$(python -c 'import sys; from fedbpt.spec import load; print(load(sys.argv[1]).federation.parties)' "$spec")
free_port() { python -c 'from clients.local import free_port; print(free_port())'; }
superlink=$(free_port)  # the SuperLink serves its Fleet, Control and Runtime APIs on one port
logs="$FLWR_HOME/logs"
mkdir -p "$FLWR_HOME" "$logs" "$(dirname "$out")"
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "fedbpt"

[superlink.fedbpt]
address = "127.0.0.1:$superlink"
insecure = true
EOF
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
mode=()
[ "$engine" = simulation ] && mode=(--simulation)
[ "$engine" = simulation ] || [ "$engine" = deployment ] || { echo "error: engine must be simulation or deployment" >&2; exit 2; }
# The app's dependencies are this environment's: Flower must not install its own copies beside them.
flower-superlink --insecure "${mode[@]}" --disable-runtime-dependency-installation --host 127.0.0.1 \
    --port "$superlink" --database "$FLWR_HOME/state.db" >"$logs/superlink.log" 2>&1 &
pids+=($!)
federation=()
if [ "$engine" = simulation ]; then
    federation=(--federation-config "num-supernodes=$parties")
else
    for ((i = 0; i < parties; i++)); do
        node="partition-id=$i num-partitions=$parties"
        if [ "$edge" != none ] && [ "$i" = $((parties - 1)) ]; then
            model=$edge
            if [[ $edge != *.gguf ]]; then
                base=$(python -c 'import sys; from fedbpt.spec import load; print(load(sys.argv[1]).model.name)' "$spec")
                fedbpt models prepare "$base" --quant "$edge" >/dev/null
                model="$base:$edge"
            fi
            node="$node engine='llama.cpp' model='$model'"
        fi
        flower-supernode --insecure --superlink "127.0.0.1:$superlink" --host 127.0.0.1 --port "$(free_port)" \
            --node-config "$node" >"$logs/supernode-$i.log" 2>&1 &
        pids+=($!)
        echo "SuperNode $i: $node (log: $logs/supernode-$i.log)"
    done
fi
for _ in $(seq 60); do
    python -c 'import httpx, sys; httpx.get(sys.argv[1]).raise_for_status()' "http://127.0.0.1:$superlink/health" \
        2>/dev/null && break
    sleep 1
done
flwr run . "${federation[@]}" --stream --run-config "config='$spec' out='$out'" | tee "$logs/run-$engine.log"
grep -q "^.*task=" "$logs/run-$engine.log" || { echo "error: the run did not finish; see $logs" >&2; exit 1; }
