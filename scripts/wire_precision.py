"""What the float16 wire costs: learned prompts scored with z as float32 and rounded to float16, side by side.

A job's vectors travel as float16 (``spec.wire``): every mean is rounded where it is made, so a federation on
the float16 wire searches through slightly different points than one on float32. This takes prompt files (from
``fedbpt simulate``, ``fedbpt compare`` or ``fedbpt job prompt``), scores each on its task's held-out rows with z
as stored and with z rounded to float16, and prints the accuracy of both, how often the predictions agree and
the largest change of a calibrated label log-probability.

    .venv/bin/python scripts/wire_precision.py runs/compare-sst2/prompts/*.json [--eval-examples 872]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from _common import held_out

from fedbpt.job import LearnedPrompt, prompted_model
from fedbpt.models import load_backend
from fedbpt.protocol import on_wire


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompts", nargs="+", type=Path)
    parser.add_argument("--eval-examples", type=int, default=0, help="held-out rows (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    backend = None
    print(f"{'prompt':40s} {'|z|':>6s} {'float32':>8s} {'float16':>8s} {'agree':>6s} {'max |d log p|':>13s}")
    changes = []
    for path in args.prompts:
        prompt = LearnedPrompt.load(path)
        backend = backend or load_backend(prompt.spec.model.name, threads=args.threads)
        model = prompted_model(prompt.spec, backend).with_start(prompt.start)
        _, examples, labels = held_out(model, args.eval_examples)
        z32 = np.asarray(prompt.z, dtype=np.float32).astype(np.float64)
        scores = model.scores(np.stack([z32, on_wire(z32, "float16")]), examples)
        predictions = scores.argmax(axis=-1)
        accuracy = (predictions == labels).mean(axis=1)
        agree = float((predictions[0] == predictions[1]).mean())
        change = float(np.abs(scores[0] - scores[1]).max())
        changes.append(accuracy[1] - accuracy[0])
        print(
            f"{path.name:40s} {np.linalg.norm(z32):6.2f} {accuracy[0]:8.4f} {accuracy[1]:8.4f} {agree:6.3f} "
            f"{change:13.4f}",
            flush=True,
        )
    print(f"threads {args.threads}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"prompts={len(changes)} mean_accuracy_change_points={100 * np.mean(changes):+.2f}")


if __name__ == "__main__":
    main()
