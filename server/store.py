"""Durable state in SQLite: jobs, parties, updates, closed rounds and evaluations.

Every write happens inside ``transaction()`` and is committed (synchronous=FULL) before the request
that caused it is answered, so a SIGKILL never loses an accepted update. The SQL is plain and the
service layer only calls the methods below, so another SQL database can replace this class.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL, state TEXT NOT NULL,
    round_opened REAL NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parties (
    job_id TEXT NOT NULL, name TEXT NOT NULL, idx INTEGER NOT NULL, token_hash TEXT UNIQUE,
    created REAL NOT NULL, PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS enrollments (
    secret_hash TEXT PRIMARY KEY, job_id TEXT NOT NULL, name TEXT NOT NULL, redeemed REAL
);
CREATE TABLE IF NOT EXISTS updates (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, party TEXT NOT NULL, body TEXT NOT NULL,
    digest TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (job_id, round, party)
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, closed REAL NOT NULL, reason TEXT NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS evaluations (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, party TEXT NOT NULL, accuracy REAL NOT NULL,
    n_examples INTEGER NOT NULL, loss REAL, received REAL NOT NULL, PRIMARY KEY (job_id, round, party)
);
"""


class Store:
    def __init__(self, path: str):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._after_commit: list[Callable[[], None]] = []
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work; the lock also serializes round closing.

        The in-memory changes given to ``after_commit`` during it run once it has committed, still under the
        lock: the caller's caches then change in commit order and never show uncommitted state. A rollback,
        or a failed commit, drops them."""
        with self._lock:
            self._after_commit = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            for change in self._after_commit:
                change()

    def after_commit(self, change: Callable[[], None]) -> None:
        """Run ``change`` when the open transaction commits (see ``transaction``)."""
        self._after_commit.append(change)

    def _all(self, sql: str, *args) -> list[dict]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args).fetchall()]

    def _one(self, sql: str, *args) -> dict | None:
        rows = self._all(sql, *args)
        return rows[0] if rows else None

    def _run(self, sql: str, *args) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def ping(self) -> None:
        self._one("SELECT 1")

    # jobs
    def add_job(self, job_id: str, spec: dict, state: dict, now: float) -> None:
        self._run(
            "INSERT INTO jobs VALUES (?, ?, 'running', ?, ?, ?)", job_id, json.dumps(spec), json.dumps(state), now, now
        )

    def job(self, job_id: str) -> dict | None:
        row = self._one("SELECT * FROM jobs WHERE id = ?", job_id)
        return row and {**row, "spec": json.loads(row["spec"]), "state": json.loads(row["state"])}

    def jobs(self) -> list[dict]:
        return [self.job(row["id"]) for row in self._all("SELECT id FROM jobs ORDER BY created, id")]

    def running_jobs(self) -> list[str]:
        return [row["id"] for row in self._all("SELECT id FROM jobs WHERE status = 'running'")]

    def set_job(self, job_id: str, status: str, state: dict, round_opened: float) -> None:
        self._run(
            "UPDATE jobs SET status = ?, state = ?, round_opened = ? WHERE id = ?",
            status,
            json.dumps(state),
            round_opened,
            job_id,
        )

    # parties
    def add_party(self, job_id: str, name: str, token_hash: str | None, now: float) -> int:
        count = self._one("SELECT COUNT(*) AS n FROM parties WHERE job_id = ?", job_id)["n"]
        self._run("INSERT INTO parties VALUES (?, ?, ?, ?, ?)", job_id, name, count, token_hash, now)
        return count

    def party(self, job_id: str, name: str) -> dict | None:
        return self._one("SELECT * FROM parties WHERE job_id = ? AND name = ?", job_id, name)

    def parties_with_tokens(self) -> list[dict]:
        return self._all("SELECT * FROM parties WHERE token_hash IS NOT NULL")

    def set_party_token(self, job_id: str, name: str, token_hash: str) -> None:
        self._run("UPDATE parties SET token_hash = ? WHERE job_id = ? AND name = ?", token_hash, job_id, name)

    def parties(self, job_id: str) -> list[dict]:
        return self._all("SELECT name, idx, created FROM parties WHERE job_id = ? ORDER BY idx", job_id)

    def add_enrollment(self, secret_hash: str, job_id: str, name: str) -> None:
        self._run("INSERT INTO enrollments VALUES (?, ?, ?, NULL)", secret_hash, job_id, name)

    def enrollment(self, secret_hash: str) -> dict | None:
        return self._one("SELECT * FROM enrollments WHERE secret_hash = ?", secret_hash)

    def redeem(self, secret_hash: str, now: float) -> None:
        self._run("UPDATE enrollments SET redeemed = ? WHERE secret_hash = ?", now, secret_hash)

    # updates
    def add_update(self, job_id: str, round_number: int, party: str, body: dict, digest: str, now: float) -> None:
        self._run(
            "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?)", job_id, round_number, party, json.dumps(body), digest, now
        )

    def update(self, job_id: str, round_number: int, party: str) -> dict | None:
        return self._one(
            "SELECT * FROM updates WHERE job_id = ? AND round = ? AND party = ?", job_id, round_number, party
        )

    def updates(self, job_id: str, round_number: int) -> list[dict]:
        rows = self._all(
            "SELECT party, body FROM updates WHERE job_id = ? AND round = ? ORDER BY party", job_id, round_number
        )
        return [{**json.loads(row["body"]), "party": row["party"]} for row in rows]

    def submitters(self, job_id: str, round_number: int) -> list[str]:
        rows = self._all("SELECT party FROM updates WHERE job_id = ? AND round = ?", job_id, round_number)
        return [row["party"] for row in rows]

    def count_updates(self, job_id: str, round_number: int) -> int:
        return self._one("SELECT COUNT(*) AS n FROM updates WHERE job_id = ? AND round = ?", job_id, round_number)["n"]

    # rounds and evaluations
    def add_round(self, job_id: str, round_number: int, reason: str, record: dict, now: float) -> None:
        self._run("INSERT INTO rounds VALUES (?, ?, ?, ?, ?)", job_id, round_number, now, reason, json.dumps(record))

    def rounds(self, job_id: str) -> list[dict]:
        rows = self._all("SELECT record FROM rounds WHERE job_id = ? ORDER BY round", job_id)
        return [json.loads(row["record"]) for row in rows]

    def add_evaluation(self, job_id: str, round_number: int, party: str, report: dict, now: float) -> None:
        self._run(
            "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?)",
            job_id,
            round_number,
            party,
            report["accuracy"],
            report["n_examples"],
            report.get("loss"),
            now,
        )

    def evaluation(self, job_id: str, round_number: int, party: str) -> dict | None:
        return self._one(
            "SELECT * FROM evaluations WHERE job_id = ? AND round = ? AND party = ?", job_id, round_number, party
        )

    def evaluations(self, job_id: str) -> list[dict]:
        return self._all(
            "SELECT round, party, accuracy, n_examples, loss FROM evaluations WHERE job_id = ? ORDER BY round, party",
            job_id,
        )
