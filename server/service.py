"""The coordinator: jobs, parties, rounds and results on top of the store and the core's round machine.

A job's rounds are ``fedbpt.rounds``: the start round (0, skipped with a single starting prompt), the search
rounds 1..R and the final scoring round R + 1, each closed by ``rounds.close`` exactly as the simulator closes
it. Every method that changes state does it in one unit of work (``Store.write``), so a request either
happens completely or not at all, and nothing is answered before it is committed. Round closing is
deterministic: the reports of a round are closed in party order, so a run resumed after a crash ends with
the same prompt.

Two in-memory caches answer the busiest reads without the store (and its lock): parties by token hash (beside
the hashes of revoked tokens), and each job's current round (``RoundView``). They assume one server process, the
only writer of the store. They are built from the store when the coordinator starts and change only after a
commit, through ``Store.after_commit``, so they always equal the committed state.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from functools import partial

from fedbpt import privacy, rounds
from fedbpt.errors import UserError
from fedbpt.job import LearnedPrompt
from fedbpt.protocol import GlobalState, InvalidUpdate
from fedbpt.spec import JobSpec, final_round, from_dict, to_dict
from fedbpt.tracking import provenance, round_event
from server.errors import Refusal
from server.journal import Journal
from server.metrics import Metrics
from server.store import Store


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RoundView:
    """A job's current round as its parties fetch it (GET .../round): the answer is encoded once per job
    state, with and without ``submitted``, so the long-polls that one closed round wakes share it."""

    def __init__(self, job: dict, spec: JobSpec, submitted: set[str]):
        state = GlobalState.from_dict(job["state"])
        self.round, self.status = state.round, job["status"]
        self.submitted = submitted  # the parties whose report for this round is in (grows as they arrive)
        running = self.status == "running"
        answer = {
            "job": job["id"],
            "status": self.status,
            **rounds.round_message(spec, state),
            "deadline": job["round_opened"] + spec.federation.deadline_s if running else None,
        }
        self._encoded = {
            flag: json.dumps({**answer, "submitted": flag}, separators=(",", ":")).encode() for flag in (False, True)
        }

    def answer(self, party: str) -> bytes:
        """The RoundInfo JSON for ``party``."""
        return self._encoded[party in self.submitted]


def _pooled(rows: list[dict], key: str) -> float:
    return sum(row[key] * row["n_examples"] for row in rows) / sum(row["n_examples"] for row in rows)


def _weighted_accuracy(rows: list[dict]) -> dict:
    """The parties' reports on one prompt, pooled: accuracy over all their held-out rows (raw and calibrated too
    when every party sent them)."""
    pooled = {"round": rows[0]["round"], "accuracy": _pooled(rows, "accuracy")}
    pooled |= {key: _pooled(rows, key) for key in ("raw", "calibrated") if all(row[key] is not None for row in rows)}
    return pooled | {"n_examples": sum(row["n_examples"] for row in rows), "parties": len(rows)}


def _zero_shot(rows: list[dict]) -> dict | None:
    """The bare template's accuracy, raw and calibrated, pooled over the parties that reported it (once each)."""
    keys = {"raw": "zero_shot_raw", "calibrated": "zero_shot_calibrated"}
    first = {row["party"]: row for row in reversed(rows) if all(row[key] is not None for key in keys.values())}
    if not first:
        return None
    scored = list(first.values())
    return {name: _pooled(scored, key) for name, key in keys.items()} | {"parties": len(scored)}


def _scored_loss(records: list[dict], prompt_round: int) -> float | None:
    """The pooled training loss of the prompt after ``prompt_round``, from the latest round that scored it."""
    for record in reversed(records):
        if record.get("scored_round", 0) == prompt_round:  # the start round scores the prompt after round 0
            return record["loss"]
    return None


class Coordinator:
    def __init__(
        self, store: Store, metrics: Metrics, notify: Callable[[str], None], journal: Journal, clock=time.time
    ):
        self.store, self.metrics, self.notify, self.journal, self.clock = store, metrics, notify, journal, clock
        self._specs: dict[str, JobSpec] = {}
        self._party_by_token = {party["token_hash"]: party for party in store.parties_with_tokens()}
        self._revoked = set(store.revoked_token_hashes())
        self._rounds = {job["id"]: self._read_round(job["id"]) for job in store.jobs()}
        self._viewer_by_token = {viewer["token_hash"]: viewer["name"] for viewer in store.viewers()}
        self._seen: dict[tuple[str, str], tuple[float, str]] = {}  # (job, party) -> (last request, its client)

    def _spec(self, job: dict) -> JobSpec:
        """The job's spec, parsed once (a job's spec never changes)."""
        if job["id"] not in self._specs:
            self._specs[job["id"]] = from_dict(job["spec"])
        return self._specs[job["id"]]

    def _read_round(self, job_id: str) -> RoundView:
        job = self.store.job(job_id)
        submitted = set(self.store.submitters(job_id, job["state"]["round"]))
        return RoundView(job, self._spec(job), submitted)

    def _refresh_round(self, job_id: str) -> None:
        """Inside a unit of work that changed the job: its round view follows once that commits."""
        view = self._read_round(job_id)

        def publish() -> None:
            self._rounds[job_id] = view

        self.store.after_commit(publish)

    def _note_submitted(self, job_id: str, round_number: int, party: str) -> None:
        """Inside a unit of work that stored the party's report: its round view says so once that commits."""

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

    def _journal(self, job_id: str, event: dict) -> None:
        """Inside a unit of work: the event is logged once that commits."""
        self.store.after_commit(lambda: self.journal.write(job_id, event))

    # jobs
    def job(self, job_id: str) -> dict:
        job = self.store.job(job_id)
        if job is None:
            raise Refusal(404, "unknown_job", f"no job {job_id!r}; list jobs with GET /v1/jobs")
        return job

    def view(self, job: dict) -> dict:
        state = GlobalState.from_dict(job["state"])
        return {
            "id": job["id"],
            "status": job["status"],
            "round": state.round,
            "kind": rounds.kind(self._spec(job), state),
            "sigma": state.sigma,
            "spec": job["spec"],
            "parties": [party["name"] for party in self.store.parties(job["id"])],
            "reports_this_round": self.store.count_reports(job["id"], state.round),
        }

    def create_job(self, spec: JobSpec) -> dict:
        if not spec.pinned:
            raise Refusal(
                422,
                "unpinned_spec",
                "the spec is not pinned to a model (model.identity, prompt.fingerprint); create jobs with "
                "'fedbpt job create', which loads the model and pins them",
            )
        try:
            privacy.check_budget(spec)
        except UserError as error:
            raise Refusal(422, "over_privacy_budget", str(error)) from None
        job_id = secrets.token_hex(6)

        def add() -> None:
            self.store.add_job(job_id, to_dict(spec), rounds.initial(spec).to_dict(), self.clock())
            self._refresh_round(job_id)
            created = {"task": spec.task_name, "model": spec.model.name, "parties": spec.federation.parties}
            self._journal(job_id, {"event": "job_created", **created, "spec": to_dict(spec), **provenance()})

        self.store.write(add)
        return self.view(self.job(job_id))

    def cancel(self, job_id: str) -> dict:
        self.store.write(lambda: self._cancel(job_id))
        self.notify(job_id)
        return self.view(self.job(job_id))

    def _cancel(self, job_id: str) -> None:
        job = self.job(job_id)
        if job["status"] != "running":
            raise Refusal(409, "job_not_running", f"job {job_id} is already {job['status']}")
        self.store.set_job(job_id, "cancelled", job["state"], self.clock())
        self._refresh_round(job_id)
        self._journal(job_id, {"event": "job_ended", "status": "cancelled", "round": job["state"]["round"]})

    # parties
    def _reserve(self, job_id: str, name: str, token: str | None) -> None:
        """Add the party, or give a party without a token (revoked, or not enrolled) a new token or secret."""
        job = self.job(job_id)
        if job["status"] != "running":
            raise Refusal(409, "job_not_running", f"job {job_id} is {job['status']}: it takes no new parties")
        party = self.store.party(job_id, name)
        if party is None:
            self.store.add_party(job_id, name, token and token_hash(token), self.clock())
        elif party["token_hash"] is None:
            self.store.withdraw_enrollments(job_id, name, self.clock())  # its older secrets give way to this one
            if token:
                self.store.set_party_token(job_id, name, token_hash(token))
        else:
            raise Refusal(
                409,
                "party_exists",
                f"job {job_id} already has a party named {name!r} with a token; pick another name, or revoke its "
                f"token first (fedbpt job revoke {job_id} {name})",
            )
        if token:
            self._remember_party(job_id, name)
        self._journal(job_id, {"event": "party_added", "party": name, "by": "token" if token else "enrollment"})

    def add_party(self, job_id: str, name: str) -> dict:
        token = "fbp_" + secrets.token_urlsafe(32)
        self.store.write(lambda: self._reserve(job_id, name, token))
        return {"job": job_id, "party": name, "token": token}

    def add_enrollment(self, job_id: str, name: str, lifetime_s: float) -> dict:
        secret, expires = "fbe_" + secrets.token_urlsafe(24), self.clock() + lifetime_s

        def enroll() -> None:
            self._reserve(job_id, name, None)
            self.store.add_enrollment(token_hash(secret), job_id, name, expires)

        self.store.write(enroll)
        return {"job": job_id, "party": name, "secret": secret, "expires": expires}

    def redeem(self, secret: str) -> dict:
        token = "fbp_" + secrets.token_urlsafe(32)
        enrollment = self.store.write(lambda: self._redeem(secret, token))
        return {"job": enrollment["job_id"], "party": enrollment["name"], "token": token}

    def _redeem(self, secret: str, token: str) -> dict:
        enrollment = self.store.enrollment(token_hash(secret))
        if enrollment is None:
            raise Refusal(401, "bad_secret", "unknown enrollment secret; ask the administrator for a new one")
        if enrollment["redeemed"] is not None:
            raise Refusal(409, "secret_used", "this enrollment secret was already redeemed; ask for a new one")
        if enrollment["expires"] <= self.clock():
            message = "this enrollment secret has expired; ask the administrator for a new one"
            raise Refusal(401, "secret_expired", message)
        self.store.redeem(enrollment["secret_hash"], self.clock())
        self.store.set_party_token(enrollment["job_id"], enrollment["name"], token_hash(token))
        self._remember_party(enrollment["job_id"], enrollment["name"])
        self._journal(enrollment["job_id"], {"event": "party_enrolled", "party": enrollment["name"]})
        return enrollment

    def party_for_token(self, token: str) -> dict | None:
        return self._party_by_token.get(token_hash(token))

    def was_revoked(self, token: str) -> bool:
        return token_hash(token) in self._revoked

    def revoke(self, job_id: str, name: str) -> dict:
        """The party's token, and its unredeemed enrollment secrets, stop working at once; re-adding the party
        (``add_party`` or ``add_enrollment``) lets it rejoin. Revoking again changes nothing."""
        self.store.write(lambda: self._revoke(job_id, name))
        return {"job": job_id, "party": name}

    def _revoke(self, job_id: str, name: str) -> None:
        self.job(job_id)
        party = self.store.party(job_id, name)
        if party is None:
            raise Refusal(404, "unknown_party", f"job {job_id} has no party named {name!r}")
        self.store.withdraw_enrollments(job_id, name, self.clock())
        if party["token_hash"] is None:
            return
        self.store.revoke_token(job_id, name, party["token_hash"], self.clock())

        def forget() -> None:
            self._party_by_token.pop(party["token_hash"], None)
            self._revoked.add(party["token_hash"])

        self.store.after_commit(forget)
        self._journal(job_id, {"event": "token_revoked", "party": name})

    # viewers: read-only access to every job's dashboard
    def add_viewer(self, name: str) -> dict:
        token = secrets.token_urlsafe(32)
        self.store.write(lambda: self._add_viewer(name, token))
        return {"name": name, "token": token}

    def _add_viewer(self, name: str, token: str) -> None:
        if any(viewer["name"] == name for viewer in self.store.viewers()):
            raise Refusal(409, "viewer_exists", f"a viewer named {name!r} exists; remove it first or pick another name")
        self.store.add_viewer(name, token_hash(token), self.clock())
        self.store.after_commit(lambda: self._viewer_by_token.__setitem__(token_hash(token), name))

    def remove_viewer(self, name: str) -> dict:
        """The viewer's token stops working at once."""
        self.store.write(lambda: self._remove_viewer(name))
        return {"name": name}

    def _remove_viewer(self, name: str) -> None:
        hashes = [viewer["token_hash"] for viewer in self.store.viewers() if viewer["name"] == name]
        if not hashes:
            raise Refusal(404, "unknown_viewer", f"no viewer named {name!r}")
        self.store.remove_viewer(name)
        self.store.after_commit(lambda: self._viewer_by_token.pop(hashes[0], None))

    def viewer_for_token(self, token: str) -> str | None:
        return self._viewer_by_token.get(token_hash(token))

    def saw(self, party: dict, client: str) -> None:
        """A request from ``party`` just now, by ``client`` (its User-Agent: program, engine, precision)."""
        self._seen[party["job_id"], party["name"]] = (self.clock(), client)

    def dashboard(self, job_id: str) -> dict:
        """What the dashboard shows of a job: its view and history, the open round's progress and deadline,
        and per party its last request, client, reports, examples and last reported loss."""
        job = self.job(job_id)
        spec, state = self._spec(job), GlobalState.from_dict(job["state"])
        submitted = set(self.store.submitters(job_id, state.round))
        activity = {row["party"]: row for row in self.store.party_activity(job_id)}
        view = self.view(job)
        parties = []
        for name in view.pop("parties"):
            row = activity.get(name, {})
            seen, client = self._seen.get((job_id, name), (None, ""))
            parties.append(
                {
                    "name": name,
                    "last_seen": seen,
                    "client": client,
                    "reports": row.get("reports", 0),
                    "last_report": row.get("last_report"),
                    "examples": row.get("examples"),
                    "last_loss": row.get("loss"),
                    "submitted": name in submitted,
                }
            )
        history = self.history(job_id)
        for record in history["rounds"]:  # the parties table says who took part; 1,000 names a round weigh much
            record.pop("parties", None)
        federation = spec.federation
        running = job["status"] == "running"
        return {
            **view,
            "now": self.clock(),
            "deadline": job["round_opened"] + federation.deadline_s if running else None,
            "per_round": federation.per_round,
            "quorum": federation.needed,
            "robust": federation.robust,
            "epsilon_budget": spec.privacy.epsilon if privacy.enabled(spec) else None,
            "history": history,
            "parties": parties,
        }

    # rounds
    def round_view(self, job_id: str) -> RoundView:
        view = self._rounds.get(job_id)
        if view is None:
            raise Refusal(404, "unknown_job", f"no job {job_id!r}; list jobs with GET /v1/jobs")
        return view

    async def submit(self, job_id: str, party: str, round_number: int, body: dict) -> dict:
        """Store a party's report (the route awaits it on the event loop: parties are many, threads few)."""
        accepted = await self.store.write_async(lambda: self._submit(job_id, party, round_number, body))
        if accepted["round_closed"]:
            self.notify(job_id)
        return accepted

    def _submit(self, job_id: str, party: str, round_number: int, body: dict) -> dict:
        fingerprint = digest(body)
        job = self.job(job_id)
        existing = self.store.report(job_id, round_number, party)
        if existing is not None:
            if existing["digest"] != fingerprint:
                self._reject("conflict")
                raise Refusal(
                    409,
                    "conflicting_report",
                    f"party {party!r} already sent a different report for round {round_number}; "
                    "one report per party per round",
                )
            self.metrics.reports.labels("duplicate").inc()
            return {"job": job_id, "party": party, "round": round_number, "duplicate": True, "round_closed": False}
        if job["status"] != "running":
            self._reject("job_not_running")
            raise Refusal(409, "job_not_running", f"job {job_id} is {job['status']}; no more reports")
        spec, state = self._spec(job), GlobalState.from_dict(job["state"])
        self._check_open(job_id, state, round_number)
        try:
            rounds.validate(spec, state, rounds.report_from_body(spec, party, body))
        except InvalidUpdate as error:
            self._reject("invalid")
            raise Refusal(422, "invalid_report", str(error)) from None
        self.store.add_report(job_id, round_number, party, body, fingerprint, self.clock())
        self._note_submitted(job_id, round_number, party)
        self.metrics.reports.labels("accepted").inc()
        closed = self.store.count_reports(job_id, round_number) >= spec.federation.per_round
        if closed:
            self._close(job, spec, state, "parties_per_round")
        return {"job": job_id, "party": party, "round": round_number, "duplicate": False, "round_closed": closed}

    def _check_open(self, job_id: str, state: GlobalState, round_number: int) -> None:
        if round_number == state.round:
            return
        code = "stale_round" if round_number < state.round else "future_round"
        self._reject(code)
        raise Refusal(
            409,
            code,
            f"round {round_number} is {'closed' if round_number < state.round else 'not open yet'}; the open "
            f"round is {state.round}: fetch GET /v1/jobs/{job_id}/round and answer it",
        )

    def _reject(self, reason: str) -> None:
        self.metrics.reports.labels(f"rejected_{reason}").inc()

    def _close(self, job: dict, spec: JobSpec, state: GlobalState, reason: str) -> None:
        """Close the open round with its reports and open the next one (or finish). Inside a unit of work."""
        now = self.clock()
        bodies = self.store.reports(job["id"], state.round)
        reports = [rounds.report_from_body(spec, party, body) for party, body in bodies]
        new, record = rounds.close(spec, state, reports)
        sent = int(sum(len(json.dumps(body)) for _, body in bodies) / len(bodies))
        received = len(json.dumps(rounds.round_message(spec, state)))
        record |= {"reason": reason, "seconds": now - job["round_opened"], "closed": now}
        record["bytes_per_party"] = {"sent": sent, "received": received}
        self.store.add_round(job["id"], state.round, reason, record, now)
        status = "finished" if rounds.finished(spec, new) else "running"
        self.store.set_job(job["id"], status, new.to_dict(), now)
        self._refresh_round(job["id"])
        self.metrics.rounds.labels(reason).inc()
        self._journal(job["id"], {**round_event(record), "reason": reason})
        if "epsilon" in record:
            self.store.after_commit(lambda: self.metrics.epsilon.labels(job["id"]).set(record["epsilon"]))
        if status == "finished":
            self._journal(
                job["id"], {"event": "job_ended", "status": status, "best_round": rounds.best_prompt(new).round}
            )
        else:
            self._journal(job["id"], {"event": "round_opened", "round": new.round, "kind": rounds.kind(spec, new)})

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
        spec, state = self._spec(job), GlobalState.from_dict(job["state"])
        overdue = self.clock() >= job["round_opened"] + spec.federation.deadline_s
        due = (
            job["status"] == "running"
            and overdue
            and self.store.count_reports(job_id, state.round) >= spec.federation.needed
        )
        if due:
            self._close(job, spec, state, "deadline")
        return due

    # results
    async def evaluate(self, job_id: str, party: str, prompt_round: int, evaluation: dict) -> bool:
        """Store a party's held-out accuracy of the prompt after ``prompt_round``; True if new."""
        return await self.store.write_async(lambda: self._evaluate(job_id, party, prompt_round, evaluation))

    def _evaluate(self, job_id: str, party: str, prompt_round: int, evaluation: dict) -> bool:
        job = self.job(job_id)
        spec, state = self._spec(job), GlobalState.from_dict(job["state"])
        last = final_round(spec) - 1  # the final round makes no prompt
        if prompt_round > last:
            rounds_note = f"job {job_id}'s last prompt is the one after round {last}"
            raise Refusal(422, "no_such_prompt", f"{rounds_note}: there is no prompt after round {prompt_round}")
        if prompt_round >= state.round:
            raise Refusal(
                409,
                "future_round",
                f"there is no global prompt after round {prompt_round} yet (the open round is {state.round})",
            )
        existing = self.store.evaluation(job_id, prompt_round, party)
        if existing is not None:
            same = existing["accuracy"] == evaluation["accuracy"] and existing["n_examples"] == evaluation["n_examples"]
            if not same:
                message = f"party {party!r} already reported another accuracy of the prompt after round {prompt_round}"
                raise Refusal(409, "conflicting_evaluation", message)
            return False
        self.store.add_evaluation(job_id, prompt_round, party, evaluation, self.clock())
        self._journal(job_id, {"event": "evaluation", "round": prompt_round, "party": party, **evaluation})
        return True

    def history(self, job_id: str) -> dict:
        """The closed rounds' records, the chosen start, the best prompt so far and, per prompt round, the
        parties' pooled held-out accuracy of that prompt."""
        job = self.job(job_id)
        state = GlobalState.from_dict(job["state"])
        by_round: dict[int, list[dict]] = {}
        evaluations = self.store.evaluations(job_id)
        for row in evaluations:
            by_round.setdefault(row["round"], []).append(row)
        best = state.best and {"round": state.best.round, "loss": state.best.loss}
        return {
            "job": job_id,
            "status": job["status"],
            "round": state.round,
            "start": state.start,
            "best": best,
            "rounds": self.store.rounds(job_id),
            "accuracy": [_weighted_accuracy(rows) for rows in by_round.values()],
            "zero_shot": _zero_shot(evaluations),
        }

    def prompt(self, job_id: str, which: str) -> dict:
        """The best prompt so far (by pooled training loss) or the last global prompt, as a prompt file."""
        job = self.job(job_id)
        state = GlobalState.from_dict(job["state"])
        if not state.start:
            raise Refusal(409, "no_prompt_yet", f"job {job_id} is still choosing its start (round 0): no prompt yet")
        if which == "best":
            best = rounds.best_prompt(state)
            z, prompt_round, loss = best.mean, best.round, best.loss
        else:
            z, prompt_round = state.mean, state.mean_round
            loss = _scored_loss(self.store.rounds(job_id), prompt_round)
        return LearnedPrompt(self._spec(job), state.start, z, prompt_round, loss, job_id).to_dict()
