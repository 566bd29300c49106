"""FedBPT's rounds as Flower messages: what the ServerApp (``server.flower``) and the ClientApp
(``clients.flower``) send each other, one definition for both sides. Needs the ``flower`` extra; nothing else in
``fedbpt`` imports this module, so the library runs without Flower.

Each message carries the job's spec (a ConfigRecord ``job``), so a node can join at any round and checks its model
against the spec's pins before any work. The prompt vectors travel as an ArrayRecord ``prompt`` in the job's wire
precision; the round fields are fedbpt's round message (``rounds.round_message``) and a report's fields its
wire body (``rounds.report_body``), so the reports a node sends are the reports a ``fedbpt client`` would send.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedbpt import rounds
from fedbpt.protocol import DTYPES, GlobalState, InvalidUpdate, Scores, Update
from fedbpt.spec import JobSpec, to_dict


def prompt_record(spec: JobSpec, z: np.ndarray, candidates: tuple[np.ndarray, ...] = ()) -> ArrayRecord:
    """The prompt (and a rank round's candidate means, as one array) in the job's wire precision."""
    arrays = {"mean": Array(np.asarray(z, dtype=DTYPES[spec.wire]))}
    if candidates:
        arrays["candidates"] = Array(np.asarray(np.stack(candidates), dtype=DTYPES[spec.wire]))
    return ArrayRecord(arrays)


def prompt_of(content: RecordDict) -> np.ndarray | None:
    """The prompt vector a message carries; None for an empty ``prompt`` record (the bare template)."""
    record = content["prompt"]
    return record["mean"].numpy().astype(np.float64) if "mean" in record else None


def job_record(spec: JobSpec) -> ConfigRecord:
    return ConfigRecord({"spec": json.dumps(to_dict(spec))})


def round_content(spec: JobSpec, state: GlobalState) -> RecordDict:
    """A round as the ServerApp sends it to a party (``GET /v1/jobs/{id}/round`` on fedbpt's own server)."""
    vectors = ("mean", "candidates")
    fields = {key: value for key, value in rounds.round_message(spec, state).items() if key not in vectors}
    prompt = prompt_record(spec, state.mean, state.candidates)
    return RecordDict({"job": job_record(spec), "round": ConfigRecord(fields), "prompt": prompt})


def state_of(content: RecordDict) -> GlobalState:
    """The open round as the party sees it, from ``round_content``."""
    fields, prompt = dict(content["round"]), content["prompt"]
    candidates = tuple(prompt["candidates"].numpy().astype(np.float64)) if "candidates" in prompt else ()
    return GlobalState(
        fields["round"],
        prompt_of(content),
        fields["sigma"],
        fields["start"],
        fields["mean_round"],
        candidates=candidates,
    )


def report_content(spec: JobSpec, report: Update | Scores) -> RecordDict:
    """A party's report as its reply: the wire body's fields, the mean as an array."""
    body = rounds.report_body(spec, report)
    if isinstance(report, Scores):
        return RecordDict({"report": ConfigRecord(body)})
    fields = {key: value for key, value in body.items() if key != "mean"}
    return RecordDict({"report": ConfigRecord(fields), "prompt": prompt_record(spec, report.mean)})


def report_of(spec: JobSpec, party: str, content: RecordDict) -> Update | Scores:
    """The report a party replied with (``report_content``); an InvalidUpdate if it is malformed."""
    if "report" not in content:
        raise InvalidUpdate("a reply needs a 'report' ConfigRecord")
    body = dict(content["report"])
    if body.get("kind") == "search":
        if "prompt" not in content or "mean" not in content["prompt"]:
            raise InvalidUpdate("a search report needs its mean as the 'prompt' ArrayRecord")
        body["mean"] = prompt_of(content).tolist()
    return rounds.report_from_body(spec, party, body)


def accuracy_content(accuracies: dict, rows: int) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({**accuracies, "num-examples": rows})})


def size(content: RecordDict) -> int:
    """The bytes a message's content takes on Flower's wire (its protobuf encoding)."""
    return recorddict_to_proto(content).ByteSize()
