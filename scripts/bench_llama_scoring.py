"""Throughput of the llama.cpp backend's scoring against one-sequence-at-a-time full-prompt decoding.

SmolLM2-135M (packaged Q4_1 GGUF), a 50-token soft prompt, population 5, 32 SST-2 dev sentences = 160
scored sequences per call. "ours" decodes each candidate's prompt once, shares it among its sentences with
``llama_memory_seq_cp`` and decodes many sentences per ``llama_decode``; "one at a time" clears the cache
and decodes prompt + sentence for every sequence. The two take turns in every repeat; best of N.

    .venv/bin/python scripts/bench_llama_scoring.py [--model smollm2-135m] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _common import best_times, held_out

from fedbpt.job import prompted_model
from fedbpt.models import load_backend
from fedbpt.spec import JobSpec, ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--examples", type=int, default=32)
    args = parser.parse_args()
    backend = load_backend(args.model, threads=args.threads, engine="llama.cpp")
    model = prompted_model(JobSpec(model=ModelSpec(args.model)), backend)
    rows, encoded, _ = held_out(model, args.examples)
    z = np.random.default_rng(0).normal(size=(5, model.projection.dim)) * JobSpec().search.step
    prompts = model.p0[None] + model.projection(z)
    scorers = {
        "ours": lambda: backend.label_logits(prompts, encoded, model.label_ids),
        "one at a time": lambda: backend.label_logits(prompts, encoded, model.label_ids, shared=False),
    }
    results, best = best_times(scorers, args.repeats)  # the outputs are compared below
    sequences = len(z) * len(rows)
    print(f"{'scorer':16s} {'seconds':>8s} {'seq/s':>7s}")
    for name, seconds in best.items():
        print(f"{name:16s} {seconds:8.3f} {sequences / seconds:7.1f}")
    ours, alone = results["ours"], results["one at a time"]
    agreement = (ours.argmax(-1) == alone.argmax(-1)).mean()
    difference = np.abs(ours - alone)
    print(f"|logit difference| mean {difference.mean():.4f} max {difference.max():.4f}", end="; ")
    print(f"same prediction {agreement:.3f}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"speedup_vs_one_at_a_time={best['one at a time'] / best['ours']:.2f}")


if __name__ == "__main__":
    main()
