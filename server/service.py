"""The coordinator: jobs, parties, rounds and results on top of the store and the core's ``aggregate``.

Every method that changes state does it in one unit of work (``Store.write``), so a request either
happens completely or not at all, and nothing is answered before it is committed. Round closing is
deterministic: the updates of a round are aggregated in party order (and ``aggregate`` itself ranks
them by fitness), so a run resumed after a crash ends with the same prompt.

Two in-memory caches answer the busiest reads without the store (and its lock): parties by token
hash, and each job's current round (``RoundView``). They assume one server process, the only writer of
the store. They are built from the store when the coordinator starts and change only after a commit,
through ``Store.after_commit``, so they always equal the committed state.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from fedbpt import aggregate
from fedbpt.aggregate import GlobalState, InvalidUpdate, Update
from server.errors import ApiError
from server.metrics import Metrics
from server.store import Store


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RoundView:
    """A job's current round as its parties fetch it (GET .../round): the answer is encoded once per job
    state, with and without ``submitted``, so the long-polls that one closed round wakes share it."""

    def __init__(self, job: dict, submitted: set[str]):
        state, spec = job["state"], job["spec"]
        self.round, self.status = state["round"], job["status"]
        self.submitted = submitted  # the parties whose update for this round is in (grows as they arrive)
        answer = {
            "job": job["id"],
            "status": self.status,
            "round": self.round,
            "mean": state["mean"],
            "sigma": state["sigma"],
            "deadline": job["round_opened"] + spec["round_deadline_s"] if self.status == "running" else None,
        }
        self._encoded = {flag: json.dumps({**answer, "submitted": flag}).encode() for flag in (False, True)}

    def answer(self, party: str) -> bytes:
        """The RoundInfo JSON for ``party``."""
        return self._encoded[party in self.submitted]


def _weighted_accuracy(rows: list[dict]) -> float | None:
    total = sum(row["n_examples"] for row in rows)
    return sum(row["accuracy"] * row["n_examples"] for row in rows) / total if total else None


class Coordinator:
    def __init__(self, store: Store, metrics: Metrics, notify: Callable[[str], None], clock=time.time):
        self.store, self.metrics, self.notify, self.clock = store, metrics, notify, clock
        self._party_by_token = {party["token_hash"]: party for party in store.parties_with_tokens()}
        self._rounds = {job["id"]: self._read_round(job["id"]) for job in store.jobs()}

    def _read_round(self, job_id: str) -> RoundView:
        job = self.store.job(job_id)
        return RoundView(job, set(self.store.submitters(job_id, job["state"]["round"])))

    def _refresh_round(self, job_id: str) -> None:
        """Inside a unit of work that changed the job: its round view follows once that commits."""
        view = self._read_round(job_id)

        def publish() -> None:
            self._rounds[job_id] = view

        self.store.after_commit(publish)

    def _note_submitted(self, job_id: str, round_number: int, party: str) -> None:
        """Inside a unit of work that stored the party's update: its round view says so once that commits."""

        def publish() -> None:
            view = self._rounds[job_id]
            if view.round == round_number:  # a unit before it in the same batch may have moved the round on
                view.submitted.add(party)

        self.store.after_commit(publish)

    def _remember_party(self, job_id: str, name: str) -> None:
        """Inside a unit of work that gave the party a token: the token authenticates once that commits."""
        party = self.store.party(job_id, name)

        def publish() -> None:
            self._party_by_token[party["token_hash"]] = party

        self.store.after_commit(publish)

    # jobs
    def job(self, job_id: str) -> dict:
        job = self.store.job(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", f"no job {job_id!r}; list jobs with GET /v1/jobs")
        return job

    def view(self, job: dict) -> dict:
        state = job["state"]
        return {
            "id": job["id"],
            "status": job["status"],
            "round": state["round"],
            "sigma": state["sigma"],
            "spec": job["spec"],
            "parties": [party["name"] for party in self.store.parties(job["id"])],
            "updates_this_round": self.store.count_updates(job["id"], state["round"]),
        }

    def create_job(self, spec: dict) -> dict:
        job_id = secrets.token_hex(6)
        state = GlobalState.initial(spec["projection"]["dim"], spec["sigma0"])

        def add() -> None:
            self.store.add_job(job_id, spec, state.to_dict(), self.clock())
            self._refresh_round(job_id)

        self.store.write(add)
        return self.view(self.job(job_id))

    def cancel(self, job_id: str) -> dict:
        self.store.write(lambda: self._cancel(job_id))
        self.notify(job_id)
        return self.view(self.job(job_id))

    def _cancel(self, job_id: str) -> None:
        job = self.job(job_id)
        if job["status"] != "running":
            raise ApiError(409, "job_not_running", f"job {job_id} is already {job['status']}")
        self.store.set_job(job_id, "cancelled", job["state"], self.clock())
        self._refresh_round(job_id)

    # parties
    def _reserve(self, job_id: str, name: str, token: str | None) -> None:
        self.job(job_id)
        if self.store.party(job_id, name) is not None:
            raise ApiError(409, "party_exists", f"job {job_id} already has a party named {name!r}; pick another name")
        self.store.add_party(job_id, name, token and token_hash(token), self.clock())
        if token:
            self._remember_party(job_id, name)

    def add_party(self, job_id: str, name: str) -> dict:
        token = "fbp_" + secrets.token_urlsafe(32)
        self.store.write(lambda: self._reserve(job_id, name, token))
        return {"job": job_id, "party": name, "token": token}

    def add_enrollment(self, job_id: str, name: str) -> dict:
        secret = "fbe_" + secrets.token_urlsafe(24)

        def enroll() -> None:
            self._reserve(job_id, name, None)
            self.store.add_enrollment(token_hash(secret), job_id, name)

        self.store.write(enroll)
        return {"job": job_id, "party": name, "secret": secret}

    def redeem(self, secret: str) -> dict:
        token = "fbp_" + secrets.token_urlsafe(32)
        enrollment = self.store.write(lambda: self._redeem(secret, token))
        return {"job": enrollment["job_id"], "party": enrollment["name"], "token": token}

    def _redeem(self, secret: str, token: str) -> dict:
        enrollment = self.store.enrollment(token_hash(secret))
        if enrollment is None:
            raise ApiError(401, "bad_secret", "unknown enrollment secret; ask the administrator for a new one")
        if enrollment["redeemed"] is not None:
            raise ApiError(409, "secret_used", "this enrollment secret was already redeemed; ask for a new one")
        self.store.redeem(enrollment["secret_hash"], self.clock())
        self.store.set_party_token(enrollment["job_id"], enrollment["name"], token_hash(token))
        self._remember_party(enrollment["job_id"], enrollment["name"])
        return enrollment

    def party_for_token(self, token: str) -> dict | None:
        return self._party_by_token.get(token_hash(token))

    # rounds
    def round_view(self, job_id: str) -> RoundView:
        view = self._rounds.get(job_id)
        if view is None:
            raise ApiError(404, "unknown_job", f"no job {job_id!r}; list jobs with GET /v1/jobs")
        return view

    async def submit(self, job_id: str, party: str, round_number: int, body: dict) -> dict:
        """Store a party's update (the route awaits it on the event loop: parties are many, threads few)."""
        accepted = await self.store.write_async(lambda: self._submit(job_id, party, round_number, body))
        if accepted["round_closed"]:
            self.notify(job_id)
        return accepted

    def _submit(self, job_id: str, party: str, round_number: int, body: dict) -> dict:
        fingerprint = digest(body)
        job = self.job(job_id)
        existing = self.store.update(job_id, round_number, party)
        if existing is not None:
            if existing["digest"] != fingerprint:
                self._reject("conflict")
                raise ApiError(
                    409,
                    "conflicting_update",
                    f"party {party!r} already sent a different update for round {round_number}; "
                    "one update per party per round",
                )
            self.metrics.updates.labels("duplicate").inc()
            return {"job": job_id, "party": party, "round": round_number, "duplicate": True, "round_closed": False}
        if job["status"] != "running":
            self._reject("job_not_running")
            raise ApiError(409, "job_not_running", f"job {job_id} is {job['status']}; no more updates")
        state, spec = GlobalState.from_dict(job["state"]), job["spec"]
        if round_number != state.round:
            self._reject("stale_round" if round_number < state.round else "future_round")
            raise ApiError(
                409,
                "stale_round" if round_number < state.round else "future_round",
                f"round {round_number} is {'closed' if round_number < state.round else 'not open yet'}; the "
                f"open round is {state.round}: fetch GET /v1/jobs/{job_id}/round and search from it",
            )
        try:
            update = Update.from_dict({**body, "party": party})
            aggregate.validate(state, update)
            if len(update.sigmas) > spec["search"]["iterations"]:
                raise InvalidUpdate(
                    f"sigmas has {len(update.sigmas)} entries; the job runs {spec['search']['iterations']} "
                    "local iterations"
                )
        except InvalidUpdate as error:
            self._reject("invalid")
            raise ApiError(422, "invalid_update", str(error)) from None
        self.store.add_update(job_id, round_number, party, body, fingerprint, self.clock())
        self._note_submitted(job_id, round_number, party)
        self.metrics.updates.labels("accepted").inc()
        closed = self.store.count_updates(job_id, round_number) >= spec["parties_per_round"]
        if closed:
            self._close(job, state, "parties_per_round")
        return {"job": job_id, "party": party, "round": round_number, "duplicate": False, "round_closed": closed}

    def _reject(self, reason: str) -> None:
        self.metrics.updates.labels(f"rejected_{reason}").inc()

    def _close(self, job: dict, state: GlobalState, reason: str) -> None:
        """Aggregate the open round's updates and open the next round (or finish). Inside a unit of work."""
        spec, now = job["spec"], self.clock()
        updates = [Update.from_dict(body) for body in self.store.updates(job["id"], state.round)]
        new = aggregate.apply(
            spec["aggregator"], state, updates, spec["sigma_rule"], spec["search"]["population"], spec["sigma_floor"]
        )
        record = {
            "round": new.round,
            "reason": reason,
            "parties": [update.party for update in updates],
            "train_fitness": float(np.average([u.fitness for u in updates], weights=[u.n_examples for u in updates])),
            "sigma": new.sigma,
            "mean_norm": float(np.linalg.norm(new.mean)),
            "seconds": now - job["round_opened"],
            "closed": now,
            "state": new.to_dict(),
        }
        self.store.add_round(job["id"], state.round, reason, record, now)
        status = "finished" if new.round >= spec["rounds"] else "running"
        self.store.set_job(job["id"], status, new.to_dict(), now)
        self._refresh_round(job["id"])
        self.metrics.rounds.labels(reason).inc()

    def close_overdue(self) -> list[str]:
        """Close every round past its deadline that has its quorum; returns the jobs that moved on."""
        moved = [
            job_id for job_id in self.store.running_jobs() if self.store.write(partial(self._close_if_due, job_id))
        ]
        for job_id in moved:
            self.notify(job_id)
        return moved

    def _close_if_due(self, job_id: str) -> bool:
        job = self.job(job_id)
        state, spec = GlobalState.from_dict(job["state"]), job["spec"]
        overdue = self.clock() >= job["round_opened"] + spec["round_deadline_s"]
        due = job["status"] == "running" and overdue and self.store.count_updates(job_id, state.round) >= spec["quorum"]
        if due:
            self._close(job, state, "deadline")
        return due

    # results
    async def report(self, job_id: str, party: str, round_number: int, report: dict) -> bool:
        """Store a party's evaluation of the global prompt after ``round_number`` rounds; True if new."""
        return await self.store.write_async(lambda: self._report(job_id, party, round_number, report))

    def _report(self, job_id: str, party: str, round_number: int, report: dict) -> bool:
        job = self.job(job_id)
        if round_number > job["state"]["round"]:
            raise ApiError(
                409,
                "future_round",
                f"there is no global prompt after round {round_number} yet (the job is at round "
                f"{job['state']['round']})",
            )
        existing = self.store.evaluation(job_id, round_number, party)
        if existing is not None:
            same = existing["accuracy"] == report["accuracy"] and existing["n_examples"] == report["n_examples"]
            if not same:
                raise ApiError(409, "conflicting_evaluation", f"party {party!r} already reported round {round_number}")
            return False
        self.store.add_evaluation(job_id, round_number, party, report, self.clock())
        return True

    def history(self, job_id: str) -> dict:
        job = self.job(job_id)
        by_round: dict[int, list[dict]] = {}
        for row in self.store.evaluations(job_id):
            by_round.setdefault(row["round"], []).append(row)
        rounds = []
        for record in self.store.rounds(job_id):
            record = {key: value for key, value in record.items() if key != "state"}
            evaluations = by_round.get(record["round"], [])
            record["accuracy"] = _weighted_accuracy(evaluations)
            record["evaluated_by"] = len(evaluations)
            rounds.append(record)
        initial = by_round.get(0, [])
        return {
            "job": job_id,
            "status": job["status"],
            "initial_accuracy": _weighted_accuracy(initial),
            "rounds": rounds,
        }

    def prompt(self, job_id: str, which: str) -> dict:
        job = self.job(job_id)
        history = self.history(job_id)
        states = {0: GlobalState.initial(job["spec"]["projection"]["dim"], job["spec"]["sigma0"]).to_dict()}
        states.update({record["round"]: record["state"] for record in self.store.rounds(job_id)})
        accuracy = {0: history["initial_accuracy"], **{r["round"]: r["accuracy"] for r in history["rounds"]}}
        chosen = job["state"]["round"]
        if which == "best":
            scored = [r for r in states if accuracy.get(r) is not None]
            if not scored:
                raise ApiError(404, "no_evaluations", "no party has reported an evaluation yet; use which=final")
            chosen = max(scored, key=lambda r: (accuracy[r], r))
        return {
            "job": job_id,
            "which": which,
            "round": chosen,
            "accuracy": accuracy.get(chosen),
            "z": states[chosen]["mean"],
            "spec": job["spec"],
        }
