"""The store on a real SQLite file: group commit of units of work written from many threads at once, and its
schema version."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.store import ACCURACY_COLUMNS, Store, StoreError


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "store.db"))
    yield store
    store.close()


def test_concurrent_units_commit_alone_or_together_and_a_failing_unit_rolls_back_alone(store):
    committed: list[int] = []
    barrier = threading.Barrier(8)

    def unit(index: int) -> int:
        store.add_job(f"job-{index}", {}, {"round": 0}, float(index))
        store.after_commit(lambda: committed.append(index))
        if index % 3 == 0:
            raise ValueError(f"unit {index} refused")
        return index

    def write(index: int) -> int | str:
        if index < 8:
            barrier.wait()  # the first eight arrive together, so they queue behind one another's commits
        try:
            return store.write(lambda: unit(index))
        except ValueError as error:
            return str(error)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(write, range(40)))

    refused = [index for index in range(40) if index % 3 == 0]
    assert outcomes == [f"unit {i} refused" if i in refused else i for i in range(40)]
    assert sorted(job["id"] for job in store.jobs()) == sorted(f"job-{i}" for i in range(40) if i not in refused)
    assert sorted(committed) == [i for i in range(40) if i not in refused]


def test_after_commit_changes_run_in_the_order_the_units_ran(store):
    seen: list[str] = []
    ran = iter(range(100))

    def unit(name: str) -> None:
        store.add_job(name, {}, {"round": 0}, float(next(ran)))  # jobs() lists them in the order they ran
        store.after_commit(lambda: seen.append(name))

    gate = threading.Event()
    store.write(lambda: None)  # the writer is idle; the next unit holds it while the others queue up
    blocker = threading.Thread(target=store.write, args=(lambda: gate.wait(5),))
    blocker.start()
    queued = [threading.Thread(target=store.write, args=(lambda name=name: unit(name),)) for name in "abcdef"]
    for thread in queued:
        thread.start()
    gate.set()
    for thread in (blocker, *queued):
        thread.join(5)
    assert sorted(seen) == list("abcdef")
    assert seen == [job["id"] for job in store.jobs()]


def test_the_writer_answers_and_keeps_running_when_a_cache_change_fails(store):
    def unit() -> str:
        store.add_job("a", {}, {"round": 0}, 0.0)
        store.after_commit(lambda: 1 / 0)
        return "committed"

    assert store.write(unit) == "committed"
    store.write(lambda: store.add_job("b", {}, {"round": 0}, 1.0))
    assert [job["id"] for job in store.jobs()] == ["a", "b"]


def test_a_database_of_another_server_version_is_refused_and_a_new_one_reopens(tmp_path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as database:
        database.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, spec TEXT)")
    with pytest.raises(StoreError, match=r"another version of the fedbpt server \(schema 0.*new file"):
        Store(str(old))
    Store(str(tmp_path / "new.db")).close()
    reopened = Store(str(tmp_path / "new.db"))
    assert reopened.jobs() == []
    reopened.close()


def downgrade_to_schema_3(database: sqlite3.Connection) -> None:
    """What schema 4 added: viewers, and the evaluations' raw, calibrated and zero-shot accuracies."""
    database.execute("DROP TABLE viewers")
    for column in ACCURACY_COLUMNS:
        database.execute(f"ALTER TABLE evaluations DROP COLUMN {column}")
    database.execute("PRAGMA user_version = 3")


def test_a_schema_3_database_gains_viewers_and_the_evaluations_accuracies(tmp_path):
    path = tmp_path / "schema3.db"
    Store(str(path)).close()
    with sqlite3.connect(path) as database:
        downgrade_to_schema_3(database)
        database.execute("INSERT INTO evaluations VALUES ('job', 0, 'party-0', 0.5, 10, 1.0)")
    store = Store(str(path))
    store.write(lambda: store.add_viewer("ops", "hash", 2.0))
    store.write(
        lambda: store.add_evaluation("job", 1, "party-0", {"accuracy": 0.6, "n_examples": 10, "raw": 0.55}, 3.0)
    )
    rows = store.evaluations("job")
    assert [row["raw"] for row in rows] == [None, 0.55] and store.viewers()[0]["name"] == "ops"
    store.close()


def test_a_schema_2_database_is_brought_up_to_date_and_its_enrollment_secrets_expire(tmp_path):
    path = tmp_path / "schema2.db"
    Store(str(path)).close()
    with sqlite3.connect(path) as database:  # as the schema 2 server left it: secrets without a lifetime
        downgrade_to_schema_3(database)
        database.execute("DROP TABLE revoked_tokens")
        database.execute("ALTER TABLE enrollments DROP COLUMN expires")
        database.execute("INSERT INTO enrollments VALUES ('hash', 'job', 'edge', NULL)")
        database.execute("PRAGMA user_version = 2")
    store = Store(str(path))
    assert store.enrollment("hash")["expires"] == 0 and store.revoked_token_hashes() == []
    store.close()
