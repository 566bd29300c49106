"""A job's history as lines a person reads: ``fedbpt job history`` and the end of ``fedbpt local``."""

from __future__ import annotations

from clients.party import ending


def produced_prompt(record: dict) -> int | None:
    """The prompt round a closed round made the global prompt: the start round's is 0, a search round's is its
    own, unless it backtracked to the best or left its means to a rank round (whose prompt is then its own); the
    final round makes none."""
    if record["kind"] == "start":
        return 0
    if record["kind"] == "rank" or (
        record["kind"] == "search" and not record["backtracked"] and "candidates" not in record
    ):
        return record["round"]
    return None


def accuracy_note(accuracy: dict[int, dict], prompt_round: int | None) -> str:
    if prompt_round not in accuracy:
        return ""
    entry = accuracy[prompt_round]
    return f"  accuracy {entry['accuracy']:.4f} ({entry['n_examples']} held-out rows)"


def round_line(record: dict, accuracy: dict[int, dict]) -> str:
    """One closed round; the accuracy is that of the prompt the round made."""
    head = f"  round {record['round']:3d}  {record['kind']:6s}  "
    if record["kind"] == "start":
        losses = ", ".join(f"{start} {loss:.4f}" for start, loss in record["start_losses"].items())
        body = f"chose {record['start']!r} by pooled loss ({losses})"
    elif record["kind"] == "rank":
        body = f"ranked {len(record['cross_losses'])} means by the parties' pooled losses  step {record['sigma']:.3f}"
        body += f"  best: round {record['best_round']}"
    else:
        body = f"pooled loss {record['loss']:.4f} of round {record['scored_round']}'s prompt"
        if record["kind"] == "search":
            move = "backtracked to the best, step" if record["backtracked"] else "step"
            body += f"  {move} {record['sigma']:.3f}"
        body += f"  best: round {record['best_round']}"
    deadline = ", at the deadline" if record["reason"] == "deadline" else ""
    parties = f"  [{len(record['parties'])} parties, {record['seconds']:.0f} s{deadline}]"
    return head + body + accuracy_note(accuracy, produced_prompt(record)) + parties


def history_lines(job: str, history: dict) -> list[str]:
    """Every closed round with its kind: the start's losses and choice, each search round's pooled training loss
    (lower is better), step, backtracking and best round, and the held-out accuracy of the prompt each made."""
    accuracy = {entry["round"]: entry for entry in history["accuracy"]}
    best = history["best"]
    returns = f"; returns the prompt after round {best['round']} (pooled loss {best['loss']:.4f})" if best else ""
    lines = [f"job {job}: {ending(history)}{returns}; losses are pooled over the parties, lower is better"]
    records = history["rounds"]
    if history["start"] and not any(record["kind"] == "start" for record in records):
        lines.append(f"  round   0  start   {history['start']!r}, the only candidate{accuracy_note(accuracy, 0)}")
    return lines + [round_line(record, accuracy) for record in records]
