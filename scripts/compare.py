"""Print a side-by-side table of simulation results files (written by `fedbpt simulate --out`).

    .venv/bin/python scripts/compare.py runs/learning/fedbpt.json runs/learning/fedavg.json

Accuracies are percentages on the run's held-out set; "at 20 min" is the last accuracy measured
within the first 20 minutes of the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BUDGET_SECONDS = 20 * 60


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main(paths: list[str]) -> None:
    runs = [(Path(path).stem, json.loads(Path(path).read_text())) for path in paths]
    print("| run | status | rounds | minutes | zero-shot | initial prompt | at 20 min | final | final - zero-shot |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, results in runs:
        scored = [r for r in results["rounds"] if "accuracy" in r]
        in_time = [r["accuracy"] for r in scored if r["elapsed"] <= BUDGET_SECONDS]
        final = results.get("final_accuracy")
        gain = "-" if final is None else f"{100 * (final - results['zero_shot_accuracy']):+.1f}"
        cells = [
            f"{results['config']['aggregator']} ({name})",
            results["status"],
            str(len(results["rounds"])),
            f"{results.get('seconds', 0) / 60:.1f}",
            percent(results["zero_shot_accuracy"]),
            percent(results["initial_prompt_accuracy"]),
            percent(in_time[-1] if in_time else None),
            percent(final),
            gain,
        ]
        print("| " + " | ".join(cells) + " |")
    for name, results in runs:
        curve = ", ".join(
            f"r{r['round']} {percent(r['accuracy'])} ({r['elapsed'] / 60:.0f} min)"
            for r in results["rounds"]
            if "accuracy" in r
        )
        print(f"\n{name}: {curve}")


if __name__ == "__main__":
    main(sys.argv[1:])
