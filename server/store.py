"""Durable state in SQLite: jobs, parties, reports, closed rounds and evaluations.

Every write happens inside ``write()`` and is committed (synchronous=FULL) before the request that
caused it is answered, so a SIGKILL never loses an accepted report. The SQL is plain and the
service layer only calls the methods below, so another SQL database can replace this class.

A closed round's record is keyed by its round number (0 the start round, 1..R the search rounds, R + 1 the
final one); an evaluation by the round after which the evaluated prompt was the global one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

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
    secret_hash TEXT PRIMARY KEY, job_id TEXT NOT NULL, name TEXT NOT NULL, redeemed REAL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    token_hash TEXT PRIMARY KEY, job_id TEXT NOT NULL, name TEXT NOT NULL, revoked REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, party TEXT NOT NULL, body TEXT NOT NULL,
    digest TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (job_id, round, party)
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, closed REAL NOT NULL, reason TEXT NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS viewers (
    name TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, party TEXT NOT NULL, accuracy REAL NOT NULL,
    n_examples INTEGER NOT NULL, received REAL NOT NULL, raw REAL, calibrated REAL, zero_shot_raw REAL,
    zero_shot_calibrated REAL, PRIMARY KEY (job_id, round, party)
);
"""
SCHEMA_VERSION = 4  # 2: job specs are JobSpecs, reports of every round kind; 3: secrets expire; 4: viewers, accuracies
ACCURACY_COLUMNS = ("raw", "calibrated", "zero_shot_raw", "zero_shot_calibrated")  # evaluations' columns since 4

T = TypeVar("T")
MAX_BATCH = 256  # units of work committed together at most (see Store.write)
logger = logging.getLogger("fedbpt.store")


class StoreError(RuntimeError):
    """A database this server cannot use; the message says what to do."""


class Store:
    def __init__(self, path: str):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._create_schema(path)
        self._units: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        self._changes: list[Callable[[], None]] = []
        self._writer = threading.Thread(target=self._write_batches, name="store-writer", daemon=True)
        self._writer.start()

    def _create_schema(self, path: str) -> None:
        """Create the tables in a new database, bring a schema 2 or 3 one up to date (new tables are created below);
        refuse one that another version wrote."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables and version == 2:  # its enrollment secrets had no lifetime: they expire now
            self._db.execute("ALTER TABLE enrollments ADD COLUMN expires REAL NOT NULL DEFAULT 0")
        if tables and version in (2, 3):
            for column in ACCURACY_COLUMNS:
                self._db.execute(f"ALTER TABLE evaluations ADD COLUMN {column} REAL")
        elif tables and version != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(
                f"database {path} was written by another version of the fedbpt server (schema {version}, this one "
                f"uses {SCHEMA_VERSION}); point FEDBPT_DB at a new file"
            )
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._units.put(None)
        self._writer.join()
        with self._lock:
            self._db.close()

    def write(self, unit: Callable[[], T]) -> T:
        """Run ``unit`` (reads and writes through this store) as one atomic unit of work and return its result
        once it is committed, or raise its exception with nothing of it kept.

        Group commit: a committing fsync costs 0.3 to 10 ms on a shared disk, so one writer thread runs the
        units, and those that queue up while a batch commits share the next commit, each in its own savepoint
        (a failing unit rolls back alone). Units run one at a time, which also serializes round closing. The
        lock is held from BEGIN to COMMIT, so no reader sees uncommitted state."""
        return self._queue(unit).result()

    async def write_async(self, unit: Callable[[], T]) -> T:
        """``write`` for the event loop: waits for the commit without holding a thread."""
        return await asyncio.wrap_future(self._queue(unit))

    def _queue(self, unit: Callable[[], T]) -> Future:
        future: Future = Future()
        self._units.put((unit, future))
        return future

    def after_commit(self, change: Callable[[], None]) -> None:
        """Inside a unit of work: run ``change`` (an in-memory cache update) once the unit is committed, still
        under the lock and in commit order, so caches never show uncommitted state; a rollback drops it."""
        self._changes.append(change)

    def _write_batches(self) -> None:
        """The writer thread: commits batches of queued units until ``close`` queues None."""
        running = True
        while running:
            batch = [self._units.get()]
            while len(batch) < MAX_BATCH and not self._units.empty():
                batch.append(self._units.get())
            running = None not in batch
            try:
                self._commit([unit for unit in batch if unit is not None])
            except Exception:  # a cache change failed after its commit; keep writing for everyone else
                logger.exception("applying committed changes failed")

    def _commit(self, batch: list[tuple[Callable[[], Any], Future]]) -> None:
        outcomes: list[tuple[Future, Any, Exception | None]] = []
        try:
            with self._lock:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    changes = []
                    for unit, future in batch:
                        self._changes = []
                        self._db.execute("SAVEPOINT unit")
                        try:
                            outcomes.append((future, unit(), None))
                            changes += self._changes
                        except Exception as error:
                            self._db.execute("ROLLBACK TO unit")
                            outcomes.append((future, None, error))
                        self._db.execute("RELEASE unit")
                    self._db.execute("COMMIT")
                except Exception as error:  # the database failed: nothing of this batch is kept
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    outcomes = [(future, None, error) for _, future in batch]
                else:
                    for change in changes:
                        change()
        finally:  # every caller gets its answer, whatever happened
            for future, result, error in outcomes:
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)

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
        """Fails unless the database takes writes: its write lock is taken and released, nothing written."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")

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

    def revoke_token(self, job_id: str, name: str, token_hash: str, now: float) -> None:
        """The party's token stops authenticating; its hash is kept, so that it is refused as revoked."""
        self._run("INSERT INTO revoked_tokens VALUES (?, ?, ?, ?)", token_hash, job_id, name, now)
        self._run("UPDATE parties SET token_hash = NULL WHERE job_id = ? AND name = ?", job_id, name)

    def revoked_token_hashes(self) -> list[str]:
        return [row["token_hash"] for row in self._all("SELECT token_hash FROM revoked_tokens")]

    def add_enrollment(self, secret_hash: str, job_id: str, name: str, expires: float) -> None:
        self._run(
            "INSERT INTO enrollments (secret_hash, job_id, name, expires) VALUES (?, ?, ?, ?)",
            secret_hash,
            job_id,
            name,
            expires,
        )

    def withdraw_enrollments(self, job_id: str, name: str, now: float) -> None:
        """The party's unredeemed enrollment secrets expire now."""
        self._run(
            "UPDATE enrollments SET expires = MIN(expires, ?) WHERE job_id = ? AND name = ? AND redeemed IS NULL",
            now,
            job_id,
            name,
        )

    def enrollment(self, secret_hash: str) -> dict | None:
        return self._one("SELECT * FROM enrollments WHERE secret_hash = ?", secret_hash)

    def redeem(self, secret_hash: str, now: float) -> None:
        self._run("UPDATE enrollments SET redeemed = ? WHERE secret_hash = ?", now, secret_hash)

    # reports
    def add_report(self, job_id: str, round_number: int, party: str, body: dict, digest: str, now: float) -> None:
        self._run(
            "INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?)", job_id, round_number, party, json.dumps(body), digest, now
        )

    def report(self, job_id: str, round_number: int, party: str) -> dict | None:
        return self._one(
            "SELECT * FROM reports WHERE job_id = ? AND round = ? AND party = ?", job_id, round_number, party
        )

    def reports(self, job_id: str, round_number: int) -> list[tuple[str, dict]]:
        """(party, report body) of every report of the round, in party order."""
        rows = self._all(
            "SELECT party, body FROM reports WHERE job_id = ? AND round = ? ORDER BY party", job_id, round_number
        )
        return [(row["party"], json.loads(row["body"])) for row in rows]

    def submitters(self, job_id: str, round_number: int) -> list[str]:
        rows = self._all("SELECT party FROM reports WHERE job_id = ? AND round = ?", job_id, round_number)
        return [row["party"] for row in rows]

    def count_reports(self, job_id: str, round_number: int) -> int:
        return self._one("SELECT COUNT(*) AS n FROM reports WHERE job_id = ? AND round = ?", job_id, round_number)["n"]

    # rounds and evaluations
    def party_activity(self, job_id: str) -> list[dict]:
        """Per party of the job that reported: its reports, the last one's time, and its last report's loss (the
        first, in a scoring round) and examples (read inside SQLite: a report holds a 500-number vector)."""
        return self._all(
            "WITH latest AS (SELECT party, COUNT(*) AS reports, MAX(received) AS last_report, MAX(round) AS round "
            "FROM reports WHERE job_id = ? GROUP BY party) "
            "SELECT latest.party, reports, last_report, json_extract(body, '$.n_examples') AS examples, "
            "coalesce(json_extract(body, '$.loss'), json_extract(body, '$.losses[0]')) AS loss "
            "FROM latest JOIN reports USING (party, round) WHERE reports.job_id = ?",
            job_id,
            job_id,
        )

    def add_viewer(self, name: str, token_hash: str, now: float) -> None:
        self._run("INSERT INTO viewers VALUES (?, ?, ?)", name, token_hash, now)

    def remove_viewer(self, name: str) -> None:
        self._run("DELETE FROM viewers WHERE name = ?", name)

    def viewers(self) -> list[dict]:
        return self._all("SELECT name, token_hash, created FROM viewers ORDER BY name")

    def add_round(self, job_id: str, round_number: int, reason: str, record: dict, now: float) -> None:
        self._run("INSERT INTO rounds VALUES (?, ?, ?, ?, ?)", job_id, round_number, now, reason, json.dumps(record))

    def rounds(self, job_id: str) -> list[dict]:
        rows = self._all("SELECT record FROM rounds WHERE job_id = ? ORDER BY round", job_id)
        return [json.loads(row["record"]) for row in rows]

    def add_evaluation(self, job_id: str, round_number: int, party: str, report: dict, now: float) -> None:
        self._run(
            "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            job_id,
            round_number,
            party,
            report["accuracy"],
            report["n_examples"],
            now,
            *(report.get(column) for column in ACCURACY_COLUMNS),
        )

    def evaluation(self, job_id: str, round_number: int, party: str) -> dict | None:
        return self._one(
            "SELECT * FROM evaluations WHERE job_id = ? AND round = ? AND party = ?", job_id, round_number, party
        )

    def evaluations(self, job_id: str) -> list[dict]:
        return self._all(
            f"SELECT round, party, accuracy, n_examples, {', '.join(ACCURACY_COLUMNS)} FROM evaluations "
            "WHERE job_id = ? ORDER BY round, party",
            job_id,
        )
