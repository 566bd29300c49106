"""How each starting prompt moves a task's predictions before any training, raw and calibrated.

A job's start round chooses among ``fedbpt.objective.STARTS`` by the parties' pooled training loss. This
scores the bare template (zero-shot) and every start (z = 0) on the first held-out rows, raw and with
content-free calibration, counts the predicted classes (a start that pulls most predictions onto one label
word shows here), and gives each start's calibrated training loss on the pooled training examples of a
10-party split for a few seeds: the loss the start round ranks by.

    .venv/bin/python scripts/starts.py --task agnews [--examples 1000] [--seeds 42,43,44]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
from _common import held_out

from fedbpt.data import federated_split
from fedbpt.job import prompted_model
from fedbpt.models import load_backend
from fedbpt.objective import STARTS
from fedbpt.spec import JobSpec, ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="agnews")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--examples", type=int, default=1000, help="first held-out rows scored")
    parser.add_argument("--seeds", default="42,43,44", help="seeds of the 10-party training splits")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    backend = load_backend(args.model, threads=args.threads)
    spec = JobSpec(task=args.task, model=ModelSpec(args.model))
    model = prompted_model(spec, backend)
    rows, examples, labels = held_out(model, args.examples)
    zero = np.zeros((1, spec.prompt.dim))
    print(f"{len(rows)} held-out rows of {args.task}, true class counts {np.bincount(labels).tolist()}")
    print(f"{'prompt':22s} {'raw':>6s} {'calibrated':>10s}  predicted class counts (calibrated)")
    for start in (None, *STARTS):
        scorer = model if start is None else model.with_start(start)
        z = None if start is None else zero
        raw = dataclasses.replace(scorer, calibrate=False).accuracy(z, examples, labels)
        predicted = scorer.predict(z, examples)
        counts = np.bincount(predicted, minlength=model.task.n_labels).tolist()
        print(f"{start or 'zero-shot':22s} {raw:6.3f} {np.mean(predicted == labels):10.3f}  {counts}", flush=True)
    print("calibrated training loss of each start on the pooled examples of 10 Dirichlet(1.0) parties x 16:")
    for seed in (int(s) for s in args.seeds.split(",")):
        pool, _ = federated_split(model.task.load_train(), 10, 16, "dirichlet", 1.0, seed)
        train, train_labels = model.encode(pool), np.array([row.label for row in pool])
        losses = {start: float(model.with_start(start).loss(zero, train, train_labels)[0]) for start in STARTS}
        chosen = min(losses, key=losses.get)
        shown = ", ".join(f"{start} {loss:.4f}" for start, loss in losses.items())
        print(f"  seed {seed}: {shown} -> {chosen}", flush=True)
    print(f"threads {args.threads}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
