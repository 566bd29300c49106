"""Print a side-by-side table of simulation results files (written by `fedbpt simulate --out`).

.venv/bin/python scripts/compare.py runs/learning/fedbpt.json runs/learning/fedavg.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    print("| run | status | rounds | minutes | zero-shot | initial prompt | final | best | final - zero-shot |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        results = json.loads(Path(path).read_text())
        config = results["config"]
        final, best = results.get("final_accuracy"), results.get("best_accuracy")
        gain = f"{100 * (final - results['zero_shot_accuracy']):+.1f}" if final is not None else "-"
        print(
            f"| {config['aggregator']} ({Path(path).stem}) | {results['status']} | {len(results['rounds'])} | "
            f"{results.get('seconds', 0) / 60:.1f} | {100 * results['zero_shot_accuracy']:.1f} | "
            f"{100 * results['initial_prompt_accuracy']:.1f} | "
            f"{'-' if final is None else f'{100 * final:.1f}'} | {'-' if best is None else f'{100 * best:.1f}'} | "
            f"{gain} |"
        )
    for path in paths:
        results = json.loads(Path(path).read_text())
        curve = ", ".join(f"r{r['round']} {100 * r['accuracy']:.1f}" for r in results["rounds"] if "accuracy" in r)
        print(f"\n{Path(path).stem}: {curve}")


if __name__ == "__main__":
    main(sys.argv[1:])
