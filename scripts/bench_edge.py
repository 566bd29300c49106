"""Memory on a Pi-class budget: one party's round pinned to one core under a hard memory cap.

Each kind of client runs one round in its own child process, pinned to one CPU (``sched_setaffinity``)
and capped with ``RLIMIT_AS`` (address space, the limit Linux enforces): the edge client (llama.cpp on a
re-quantized GGUF file, no torch, with its small-memory defaults: a 512-token cache and the projection
regenerated at each step), the same with the projection kept in memory (``edge-cached``), the
transformers client (bf16) and a backprop client (FedPrompt-style prompt tuning by gradient descent
through the frozen model, ``fedbpt.baselines.prompt_tuning``; one epoch of batches of 8) on the same
model (SmolLM2-135M unless ``--model`` names another packaged one). A round is what a party does after it
has the job's spec: load the model, build the job's projection on the device, encode its examples, and run
its local optimisation. A client that cannot run under the cap is run again without it, to measure what it
needs. Prints peak RSS and seconds per round for each, and as the last line
``edge_rss_mb=<x> fedprompt_rss_mb=<y> ratio=<y/x>``.

    .venv/bin/python scripts/bench_edge.py [--cap-mb 1024] [--quant q4_0] [--iterations 4] [--context 512]
                                           [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("edge", "edge-cached", "transformers", "fedprompt")
CACHED_PROJECTION_MB = 64  # edge-cached: the edge client with --projection-cache-mb 64 (keeps SmolLM2's 58 MB)


def child(kind: str, cap_mb: int, job: dict, args: argparse.Namespace) -> dict:
    """Runs in the child process: pin, cap, then one round of this kind of client on the job's spec ``job``."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if cap_mb:
        resource.setrlimit(resource.RLIMIT_AS, (cap_mb * 2**20, cap_mb * 2**20))
    edge = kind.startswith("edge")
    if edge:
        from clients.edge import edge_backend  # first: the edge client's own import set-up applies
    import numpy as np

    from clients.party import DataChoice, party_examples
    from fedbpt.job import prompted_model
    from fedbpt.models import load_backend
    from fedbpt.protocol import GlobalState
    from fedbpt.search import respond
    from fedbpt.spec import from_dict

    spec = from_dict(job)
    start = time.perf_counter()
    if edge:
        backend = edge_backend(spec, None, args.quant, threads=1, context=args.context)
        cache_mb = CACHED_PROJECTION_MB if kind == "edge-cached" else 0
        model = prompted_model(spec, backend, projection_cache_bytes=cache_mb * 2**20)
    else:
        backend = load_backend(spec.model.name, dtype="bfloat16", threads=1)
        model = prompted_model(spec, backend)
    train, _ = party_examples(spec, DataChoice(shard=0))
    labels = np.array([example.label for example in train])
    loaded = time.perf_counter()
    examples = model.encode(train)
    if kind == "fedprompt":
        from fedbpt.baselines.prompt_tuning import LocalTraining, fedprompt_round, initial_soft_prompt

        fedprompt_round(model, initial_soft_prompt(model), examples, labels, LocalTraining(epochs=1), seed=0)
    else:  # the first search round, from the job's first start
        state = GlobalState(1, np.zeros(spec.prompt.dim), spec.search.step, spec.prompt.starts[0])
        respond(spec, state, model, examples, labels, 0, "bench")
    done = time.perf_counter()
    return {"rss_mb": peak_rss_mb(), "round_s": done - start, "search_s": done - loaded}


def peak_rss_mb() -> float:
    """This process image's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that across
    ``exec`` from the parent that forked the child, so a child would report at least its parent's size."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def job_spec(args: argparse.Namespace) -> dict:
    """The job as a server would hand it out: 10 parties of ``--examples`` SST-2 sentences, pinned here to the
    GGUF file (so without torch)."""
    from fedbpt.job import pin
    from fedbpt.models import load_llama_backend
    from fedbpt.spec import from_dict, to_dict

    spec = from_dict(
        {
            "model": {"name": args.model},
            "search": {"population": 5, "iterations": args.iterations},
            "federation": {"parties": 10},
            "data": {"examples_per_party": args.examples},
        }
    )
    return to_dict(pin(spec, load_llama_backend(args.model, threads=1)))


def run(kind: str, cap_mb: int, spec_file: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--cap-mb", str(cap_mb), "--quant", args.quant]
    command += ["--iterations", str(args.iterations), "--examples", str(args.examples), "--spec", str(spec_file)]
    command += ["--context", str(args.context)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return {"failed": (result.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=KINDS)
    parser.add_argument("--cap-mb", type=int, default=1024)
    parser.add_argument("--quant", default="q4_0", choices=("f16", "q8_0", "q4_0"))
    parser.add_argument("--iterations", type=int, default=4, help="CMA-ES iterations per round (FedPrompt: 1 epoch)")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--context", type=int, default=512, help="edge: llama.cpp cache tokens (its --context)")
    parser.add_argument("--model", default="smollm2-135m", help="a packaged model (fedbpt models list)")
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.cap_mb, json.loads(args.spec.read_text()), args)))
        return
    from fedbpt.models import prepare

    prepare(args.model, args.quant)  # once, here: no edge child's round should include re-quantizing
    spec_file = Path(tempfile.mkdtemp()) / "spec.json"
    spec_file.write_text(json.dumps(job_spec(args)))
    results = {}
    print(f"{'client':14s} {'under cap':>9s} {'peak RSS MB':>11s} {'s/round':>8s} {'s/search':>8s}")
    for kind in KINDS:
        result, capped = run(kind, args.cap_mb, spec_file, args), "yes"
        if "failed" in result:
            print(f"{kind:14s} fails under the {args.cap_mb} MB cap: {result['failed']}")
            result, capped = run(kind, 0, spec_file, args), "no"
        results[kind] = result
        if "failed" in result:
            print(f"{kind:14s} failed: {result['failed']}")
            continue
        print(f"{kind:14s} {capped:>9s} {result['rss_mb']:11.0f} {result['round_s']:8.1f} {result['search_s']:8.1f}")
    print(f"one core each; cap {args.cap_mb} MB (RLIMIT_AS); load average {os.getloadavg()[0]:.2f}")
    edge, fedprompt = results["edge"].get("rss_mb", float("nan")), results["fedprompt"].get("rss_mb", float("nan"))
    print(f"edge_rss_mb={edge:.0f} fedprompt_rss_mb={fedprompt:.0f} ratio={fedprompt / edge:.2f}")


if __name__ == "__main__":
    main()
