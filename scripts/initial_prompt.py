"""How the starting prompt p0 moves a task's predictions, before any training.

Every prompt method here starts from p0 (FedBPT and FedAvg-BBT search around it; FedPrompt and FedP-tuning
start their tensors from it). This scores the bare template (zero-shot) and p0 at several prompt lengths
and placements on the first held-out rows, and counts the predicted classes: a p0 that pulls most
predictions onto one label starts every method below zero-shot.

    .venv/bin/python scripts/initial_prompt.py --task agnews [--examples 200] [--lengths 50,20,10]
"""

from __future__ import annotations

import argparse

import numpy as np

from fedbpt.job import make_spec, prompted_model
from fedbpt.models import load_backend
from fedbpt.tasks import resolve_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="agnews")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--examples", type=int, default=200, help="first held-out rows scored")
    parser.add_argument("--lengths", default="50,20,10", help="prompt lengths (tokens), comma-separated")
    parser.add_argument("--placements", default="before,after")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    backend = load_backend(args.model, threads=args.threads or None)
    rows = resolve_task(args.task).load_eval()[: args.examples]
    labels = np.array([row.label for row in rows])
    print(f"{'prompt':22s} {'accuracy':>8s}  predicted class counts (true: {np.bincount(labels).tolist()})")
    first = True
    for placement in args.placements.split(","):
        for length in (int(n) for n in args.lengths.split(",")):
            spec = make_spec(backend, args.model, args.task, n_tokens=length, placement=placement)
            model = prompted_model(spec, backend)
            examples = model.encode(rows)
            if first:
                report("zero-shot", model.logits(None, examples)[0], labels)
                first = False
            p0_logits = model.logits(np.zeros(model.projection.dim), examples)[0]
            report(f"p0, {length} tokens {placement}", p0_logits, labels)


def report(name: str, logits: np.ndarray, labels: np.ndarray) -> None:
    predicted = logits.argmax(-1)
    counts = np.bincount(predicted, minlength=logits.shape[-1]).tolist()
    print(f"{name:22s} {np.mean(predicted == labels):8.3f}  {counts}", flush=True)


if __name__ == "__main__":
    main()
