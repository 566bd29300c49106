"""FedBPT as a Flower ClientApp: each Flower node is one party, answering the ServerApp's rounds with
``fedbpt.search.respond`` exactly as ``fedbpt client`` answers fedbpt's own server.

A node's config says which party it is, in Flower's own keys: ``partition-id`` (the party's index, as
``fedbpt client --shard``) and ``num-partitions`` (the job's parties), which the Simulation Engine sets and a
SuperNode takes as ``--node-config "partition-id=0 num-partitions=3"``. Optional keys: ``engine`` (transformers,
or llama.cpp for edge nodes: torch is then never imported), ``model`` (default: the job's), ``threads``,
``data-dir`` (where a task file's data is) and ``eval-examples`` (held-out rows; default: the job's).

The backend is loaded once per process; a party (its model rebuilt for the job and checked against the job's
pins, its examples encoded) once per job, before any work.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.party import DataChoice, encoded, party_examples
from fedbpt import flower
from fedbpt.backends import Backend, EncodedExample
from fedbpt.errors import UserError
from fedbpt.job import prompted_model
from fedbpt.objective import PromptedModel
from fedbpt.search import respond
from fedbpt.spec import JobSpec, from_dict

ENGINES = ("transformers", "llama.cpp")

app = ClientApp()


@dataclass(frozen=True)
class NodeSettings:
    """What a node's config says about its party; checked before any model loads."""

    index: int
    partitions: int
    engine: str = "transformers"
    model: str = ""
    threads: int = 0
    data_dir: Path = Path(".")
    eval_examples: int = -1  # -1: the job's data.eval_examples

    @classmethod
    def from_node_config(cls, config: dict) -> NodeSettings:
        if "partition-id" not in config or "num-partitions" not in config:
            raise UserError(
                "this node's config needs partition-id and num-partitions: start the SuperNode with "
                '--node-config "partition-id=0 num-partitions=3"'
            )
        settings = cls(
            int(config["partition-id"]),
            int(config["num-partitions"]),
            str(config.get("engine", "transformers")),
            str(config.get("model", "")),
            int(config.get("threads", 0)),
            Path(str(config.get("data-dir", "."))),
            int(config.get("eval-examples", -1)),
        )
        if settings.engine not in ENGINES:
            raise UserError(f"node config engine must be one of {', '.join(ENGINES)}, got {settings.engine!r}")
        return settings


@dataclass
class Party:
    spec: JobSpec
    settings: NodeSettings
    name: str
    model: PromptedModel
    examples: list[EncodedExample]
    labels: np.ndarray
    eval_set: list[EncodedExample]
    eval_labels: np.ndarray


@functools.cache
def backend(engine: str, model: str, threads: int) -> Backend:
    """The node's model, loaded once per process."""
    from fedbpt.models import load_backend

    return load_backend(model, threads=threads or None, engine=engine)


@functools.cache
def party(spec_json: str, settings: NodeSettings) -> Party:
    """This node's party of the job: its shard, its model checked against the job's pins (a JobMismatch if it
    differs), its training and held-out examples encoded."""
    spec = from_dict(json.loads(spec_json))
    parties = spec.federation.parties
    if settings.partitions != parties:
        raise UserError(f"this node's num-partitions is {settings.partitions}, the job has {parties} parties")
    rows = None if settings.eval_examples < 0 else settings.eval_examples
    train, held_out = party_examples(spec, DataChoice(settings.index, rows, settings.data_dir))
    loaded = backend(settings.engine, settings.model or spec.model.name, settings.threads)
    model = prompted_model(spec, loaded, settings.data_dir)
    examples, labels = encoded(model, train)
    eval_set, eval_labels = encoded(model, held_out)
    return Party(spec, settings, f"party-{settings.index}", model, examples, labels, eval_set, eval_labels)


def node_party(message: Message, context: Context) -> Party:
    return party(message.content["job"]["spec"], NodeSettings.from_node_config(dict(context.node_config)))


@app.query()
def query(message: Message, context: Context) -> Message:
    """The handshake: which party this node is, after loading and checking everything it needs for the job."""
    me = node_party(message, context)
    fields = {
        "partition-id": me.settings.index,
        "num-partitions": me.settings.partitions,
        "engine": me.settings.engine,
        "identity": me.model.backend.identity,
        "torch": "torch" in sys.modules,  # an edge node's must be False
    }
    return Message(RecordDict({"node": ConfigRecord(fields)}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """One round of the job: the party's report (start losses, a search update, or the final loss)."""
    me = node_party(message, context)
    state = flower.state_of(message.content)
    model = me.model.with_start(state.start) if state.start and me.model.start != state.start else me.model
    report = respond(me.spec, state, model, me.examples, me.labels, me.settings.index, me.name)
    return Message(flower.report_content(me.spec, report), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """The held-out accuracy, raw and calibrated, of a prompt (none: the bare template) on this party's share of
    the held-out rows."""
    me = node_party(message, context)
    start = message.content["round"]["start"]
    model = me.model.with_start(start) if me.model.start != start else me.model
    accuracies = model.accuracies(flower.prompt_of(message.content), me.eval_set, me.eval_labels)
    return Message(flower.accuracy_content(accuracies, len(me.eval_labels)), reply_to=message)
