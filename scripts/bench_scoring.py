"""Scoring speed, side by side in one run: naive full sequences vs our shared-prefix scoring vs the limit.

SmolLM2-135M (bf16), a 50-token soft prompt, population 5, 32 SST-2 dev examples. "limit" runs the
same 160 example sequences with no prompt at all: no scorer of prompted sequences can beat it.
Also reports the "after" placement (speed, and the initial prompt's accuracy on the first 200 SST-2 dev
rows in each placement) and how far bf16 logits are from fp32 ones.

    .venv/bin/python scripts/bench_scoring.py [--repeats 5] [--threads 2]

Last line: speedup_vs_naive=<x> fraction_of_limit=<y>  (targets: >= 2.5 and >= 0.8)
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from _common import best_times, held_out

from fedbpt.models import load_backend
from fedbpt.objective import PromptedModel
from fedbpt.projection import Projection, projection_scale
from fedbpt.tasks import builtin_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--population", type=int, default=5)
    parser.add_argument("--examples", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = builtin_task("sst2")
    backends = {dtype: load_backend("smollm2-135m", dtype=dtype) for dtype in ("bfloat16", "float32")}
    backend = backends["bfloat16"]
    projection = Projection(1, 500, 50, backend.hidden_size, projection_scale(backend.embedding_std(), 500))
    model = PromptedModel.build(backend, task, projection)
    _, examples, _ = held_out(model, args.examples)
    z = np.random.default_rng(0).normal(size=(args.population, 500))
    prompts = model.p0[None] + projection(z)
    labels = model.label_ids
    sequences = args.population * len(examples)

    runs = {
        "naive": lambda: backend.label_logits(prompts, examples, labels, "before", shared=False),
        "ours (before)": lambda: backend.label_logits(prompts, examples, labels, "before"),
        "ours (after)": lambda: backend.label_logits(prompts, examples, labels, "after"),
        "limit (no prompt)": lambda: backend.label_logits(None, examples * args.population, labels),
    }
    _, seconds = best_times(runs, args.repeats)
    print(f"{'scorer':20s} {'seconds':>8s} {'seq/s':>8s}")
    for name, value in seconds.items():
        print(f"{name:20s} {value:8.3f} {sequences / value:8.1f}")

    for placement in ("before", "after"):
        placed = PromptedModel.build(backend, task, projection, placement)
        _, held_out_examples, held_out_labels = held_out(placed, 200)
        accuracy = placed.accuracy(np.zeros(500), held_out_examples, held_out_labels)
        speed = sequences / seconds[f"ours ({placement})"]
        print(f"placement {placement:6s}: initial-prompt accuracy {accuracy:.3f}, {speed:.1f} seq/s")

    reference = PromptedModel.build(backends["float32"], task, projection)
    outputs, fp32_seconds = best_times({"fp32": lambda: reference.logits(z, examples)}, 1)
    logits32, logits16 = outputs["fp32"], model.logits(z, examples)
    agreement = (logits32.argmax(-1) == logits16.argmax(-1)).mean()
    print(
        f"bf16 vs fp32: prediction agreement {agreement:.4f}, max |logit diff| "
        f"{np.abs(logits32 - logits16).max():.3f}, fp32 {fp32_seconds['fp32'] / seconds['ours (before)']:.2f}x slower"
    )
    print(f"threads {torch.get_num_threads()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ours = seconds["ours (before)"]
    print(f"speedup_vs_naive={seconds['naive'] / ours:.2f} fraction_of_limit={seconds['limit (no prompt)'] / ours:.2f}")


if __name__ == "__main__":
    main()
