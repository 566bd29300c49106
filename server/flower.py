"""FedBPT as a Flower ServerApp: the job's rounds (``fedbpt.rounds``, whose aggregation is ``fedbpt.aggregate``)
behind Flower's strategy interface, on either of Flower's engines.

The run config (``[tool.flwr.app.config]`` in pyproject.toml, ``flwr run --run-config``) names a job spec
file, the same one ``fedbpt simulate --config`` and ``fedbpt local --config`` read:

    flwr run . --run-config "config='/abs/path/run.toml' out='/abs/path/runs/flower.json'"

The ServerApp pins the spec to the model once (as ``fedbpt job create`` does), asks every node which party it
is (each node loads and checks its model before it answers), then plays the job's rounds: one train exchange
per fedbpt round with the round's parties, and a federated evaluation of the prompts that ``fedbpt simulate``
scores, on the parties' shares of the held-out rows. The same spec and seeds give the same global state as
``fedbpt simulate``. The results file (rewritten after every round) is a prompt file, like simulate's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedbpt import flower, privacy, rounds
from fedbpt.errors import UserError
from fedbpt.federation import round_parties
from fedbpt.protocol import InvalidUpdate
from fedbpt.results import returned_prompt, summary, summary_line, write_json
from fedbpt.simulate import finish, progress_note
from fedbpt.spec import JobSpec, load, to_dict
from fedbpt.tracking import provenance

app = ServerApp()


@dataclass(frozen=True)
class RunSettings:
    """The ServerApp's settings, from Flower's run config."""

    spec: JobSpec
    engine: str = "transformers"  # how the ServerApp loads the model once, to pin the spec
    eval_every: int = 1
    out: Path | None = None
    connect_timeout_s: float = 300.0

    @classmethod
    def from_run_config(cls, config: dict) -> RunSettings:
        path = str(config.get("config", ""))
        spec = load(Path(path)) if path else JobSpec()
        out = str(config.get("out", ""))
        return cls(
            spec,
            str(config.get("engine", "transformers")),
            int(config.get("eval-every", 1)),
            Path(out) if out else None,
            float(config.get("connect-timeout-s", 300.0)),
        )


def connect(grid: Grid, spec: JobSpec, timeout_s: float) -> dict[int, int]:
    """Party index -> node id: wait for the job's parties' nodes, then ask each which party it is. A node answers
    after loading its model and checking it against the spec's pins, so a wrong model fails here, in one line."""
    parties = spec.federation.parties
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < parties:
        if time.monotonic() > deadline:
            raise UserError(f"{len(nodes)} of the job's {parties} nodes connected within {timeout_s:.0f} s")
        time.sleep(1)
    content = RecordDict({"job": flower.job_record(spec)})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
    parties_of: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise UserError(f"node {node} cannot take part: {reply.error.reason}")
        index = int(reply.content["node"]["partition-id"])
        if index in parties_of:
            raise UserError(f"nodes {parties_of[index]} and {node} both hold partition-id {index}")
        parties_of[index] = node
        node_info = reply.content["node"]
        torch = "torch loaded" if node_info["torch"] else "no torch"
        log(INFO, f"node {node} is party-{index} ({node_info['engine']}, {node_info['identity']}, {torch})")
    missing = sorted(set(range(parties)) - set(parties_of))
    if missing:
        raise UserError(f"no node answered for partition-id {missing}; every party needs a node")
    return parties_of


class FedBPT(Strategy):
    """fedbpt's round policy and aggregation as a Flower strategy.

    The job's state (``fedbpt.protocol.GlobalState``: the prompt, the step, the best so far) is the strategy's,
    and ``start`` plays rounds until the spec says the job is finished: one train exchange per fedbpt round (the
    start round, each search round, the final scoring round; backtracking can skip one), so Flower's round
    counter is fedbpt's round number. ``configure_evaluate`` / ``aggregate_evaluate`` score a prompt on the
    parties' held-out rows."""

    def __init__(self, spec: JobSpec, nodes: dict[int, int]):
        self.spec = spec
        self.nodes = nodes
        self.parties = {node: f"party-{index}" for index, node in nodes.items()}
        self.state = rounds.initial(spec)
        self.record: dict = {}

    def summary(self) -> None:
        federation = self.spec.federation
        log(
            INFO,
            "FedBPT: %s aggregation, ranking %s, robust %s; %s parties, %s per round, %s search rounds",
            federation.aggregator,
            federation.ranking,
            federation.robust,
            federation.parties,
            federation.per_round,
            federation.rounds,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The open round, to the round's parties (``arrays`` and ``config`` are carried by the state)."""
        content = flower.round_content(self.spec, self.state)
        indices = round_parties(self.spec, self.state.round)
        return [
            Message(content=content, message_type=MessageType.TRAIN, dst_node_id=self.nodes[int(i)]) for i in indices
        ]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """Close the round with the parties' valid reports (``rounds.close``); returns the new global prompt and
        the round's pooled loss and step."""
        reports, sizes = [], []
        for reply in replies:
            party = self.parties[reply.metadata.src_node_id]
            if reply.has_error():
                log(WARNING, "round %s: %s failed: %s", server_round, party, reply.error.reason)
                continue
            try:
                report = flower.report_of(self.spec, party, reply.content)
                rounds.validate(self.spec, self.state, report)
            except InvalidUpdate as error:
                log(WARNING, "round %s: %s's report refused: %s", server_round, party, error)
                continue
            reports.append(report)
            sizes.append(flower.size(reply.content))
        needed = self.spec.federation.needed
        if len(reports) < needed:
            raise UserError(f"round {server_round}: {len(reports)} valid reports, the round needs {needed}")
        received = flower.size(flower.round_content(self.spec, self.state))
        self.state, self.record = rounds.close(self.spec, self.state, reports)
        self.record["bytes_per_party"] = {"sent": int(np.mean(sizes)), "received": received}
        metrics = {key: self.record[key] for key in ("loss", "sigma") if key in self.record}
        return flower.prompt_record(self.spec, self.state.mean), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Score the prompt in ``arrays`` (no arrays: the bare template) with the start in ``config``."""
        content = RecordDict({"job": flower.job_record(self.spec), "round": config, "prompt": arrays})
        return [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
            for node in self.nodes.values()
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord:
        """The example-weighted held-out accuracy, raw and calibrated: the accuracy on all the parties' rows."""
        scored = []
        for reply in replies:
            if reply.has_error():
                raise UserError(f"{self.parties[reply.metadata.src_node_id]} failed to evaluate: {reply.error.reason}")
            scored.append(reply.content["metrics"])
        if len(scored) != len(self.nodes):
            raise UserError(f"{len(scored)} of {len(self.nodes)} parties evaluated the prompt in time")
        rows = [metrics["num-examples"] for metrics in scored]
        return MetricRecord(
            {key: float(np.average([m[key] for m in scored], weights=rows)) for key in ("raw", "calibrated")}
            | {"num-examples": int(sum(rows))}
        )

    def evaluate(self, grid: Grid, z: np.ndarray | None, after_round: int) -> dict:
        """Held-out accuracy, raw and calibrated, of ``z`` (None: the bare template) with the chosen start."""
        arrays = ArrayRecord() if z is None else flower.prompt_record(self.spec, z)
        config = ConfigRecord({"start": self.state.start or self.spec.prompt.starts[0], "after-round": after_round})
        timeout = self.spec.federation.deadline_s
        replies = grid.send_and_receive(self.configure_evaluate(after_round, arrays, config, grid), timeout=timeout)
        return dict(self.aggregate_evaluate(after_round, replies))

    def start(self, grid: Grid, results: dict, save, eval_every: int = 1) -> dict:
        """Play the job's rounds into ``results`` (as ``fedbpt simulate`` does), calling ``save`` after each."""
        spec, scoring = self.spec, "calibrated" if self.spec.prompt.calibrate else "raw"

        def evaluate(state, z: np.ndarray, after_round: int) -> float:
            if str(after_round) not in results["accuracy"]:
                both = self.evaluate(grid, z, after_round)
                results["accuracies"][str(after_round)] = {key: both[key] for key in ("raw", "calibrated")}
                results["accuracy"][str(after_round)] = both[scoring]
            return results["accuracy"][str(after_round)]

        self.summary()
        bare = self.evaluate(grid, None, 0)
        results |= {
            "zero_shot": bare["raw"],
            "zero_shot_calibrated": bare["calibrated"],
            "eval_size": bare["num-examples"],
        }
        log(
            INFO,
            "zero-shot %.4f (calibrated %.4f) on %s held-out examples",
            bare["raw"],
            bare["calibrated"],
            bare["num-examples"],
        )
        while not rounds.finished(spec, self.state):
            number, started = self.state.round, time.perf_counter()
            replies = grid.send_and_receive(
                self.configure_train(number, ArrayRecord(), ConfigRecord(), grid), timeout=spec.federation.deadline_s
            )
            self.aggregate_train(number, replies)
            record = self.record | {"seconds": time.perf_counter() - started}
            if record["kind"] == "start" or (record["kind"] != "final" and record["round"] % eval_every == 0):
                record["accuracy"] = evaluate(self.state, self.state.mean, self.state.mean_round)
            results["rounds"].append(record)
            results["state"] = self.state.to_dict()
            log(INFO, progress_note(record))
            save()
        finish(results, spec, self.state, evaluate)
        results["status"] = "finished"
        return results


def run(grid: Grid, settings: RunSettings) -> dict:
    """The whole run: pin the spec, connect the parties, play the rounds, write the results and the prompt."""
    from fedbpt.job import pin
    from fedbpt.models import load_backend

    spec = settings.spec
    privacy.check_budget(spec)
    if not spec.pinned:
        spec = pin(spec, load_backend(spec.model.name, engine=settings.engine))
    started = time.perf_counter()
    results = {
        "spec": to_dict(spec),
        "status": "running",
        "engine": "flower",
        "provenance": provenance(),
        "rounds": [],
        "accuracy": {},
        "accuracies": {},
    }

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        if settings.out is not None:
            write_json(settings.out, results)

    strategy = FedBPT(spec, connect(grid, spec, settings.connect_timeout_s))
    strategy.start(grid, results, save, settings.eval_every)
    save()
    for line in summary(results).splitlines():
        log(INFO, line)
    prompt = returned_prompt(results, spec)
    if settings.out is not None and prompt is not None:
        prompt.save(settings.out.with_suffix(".prompt.json"))
        log(
            INFO,
            "results written to %s, the returned prompt to %s",
            settings.out,
            settings.out.with_suffix(".prompt.json"),
        )
    log(INFO, summary_line(results))
    return results


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, RunSettings.from_run_config(dict(context.run_config)))
