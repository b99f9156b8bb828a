"""Job queues shared by real worker processes on SQLite, PostgreSQL and Redis.

* Four processes claiming from one queue never run a job twice.
* 10,000 payouts, their workers killed with SIGKILL three times (once each
  in the worst place: the payout row written, the transaction not yet
  committed): on SQLite and PostgreSQL, where the handler completes its job in
  its own transaction, every entry is paid exactly once; on Redis, which cannot
  join the handler's transaction, nothing is lost and only jobs that were in
  flight at a kill may be paid twice.

Workers are ``python -m tests.jobs_worker`` processes (see that module).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from resilience.jobs import JobQueue
from resilience.storage import store_from_url

from .backends import POSTGRES_DSN, REDIS_URL, drop_postgres_tables, require_postgres, require_redis

ROOT = Path(__file__).resolve().parent.parent
PAYOUTS = 10_000
CONCURRENCY = 4
LEASE = 2.0


@dataclass
class Fleet:
    name: str
    store: str
    options: dict[str, Any] = field(default_factory=dict)
    payouts: str = ""
    effects: str = ""

    def queue(self, queue: str) -> JobQueue:
        return JobQueue(queue, store=store_from_url(self.store, **self.options), lease=LEASE)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:10]
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"
        with sqlite3.connect(path) as connection:
            connection.execute(
                "CREATE TABLE payouts (entry INTEGER NOT NULL, amount INTEGER, worker INTEGER)"
            )
        yield Fleet("sqlite", f"sqlite:///{path}", {"timeout": 30.0})
        return
    if request.param == "postgres":
        import psycopg

        dsn = require_postgres()
        table = f"jf_{tag}"
        payouts = f"payouts_{tag}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                f"CREATE TABLE {payouts} (entry integer NOT NULL, amount integer, worker integer)"
            )
        try:
            yield Fleet("postgres", dsn, {"table": table, "timeout": 10.0}, payouts=payouts)
        finally:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(f"DROP TABLE IF EXISTS {payouts}")
            drop_postgres_tables(dsn, table)
        return
    import redis

    url = require_redis()
    prefix = f"jf_{tag}"
    try:
        yield Fleet(
            "redis",
            url,
            {"prefix": prefix, "timeout": 5.0},
            payouts=f"{prefix}:payouts",
            effects=url,
        )
    finally:
        client = redis.Redis.from_url(url)
        names = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if names:
            client.delete(*names)
        client.close()


def start_worker(fleet: Fleet, queue: str, kind: str, **spec: Any) -> subprocess.Popen[bytes]:
    spec.update(
        store=fleet.store,
        options=fleet.options,
        queue=queue,
        kind=kind,
        lease=LEASE,
        payouts=fleet.payouts,
        effects=fleet.effects,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.jobs_worker", json.dumps(spec)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def wait_for(path: Path, process: subprocess.Popen[bytes], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"worker exited early with {process.returncode}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def drain(fleet: Fleet, queue: JobQueue, name: str, kind: str) -> None:
    """Run fresh workers until every job is finished (leases of killed workers lapse first)."""
    for _ in range(10):
        stats = queue.stats()
        if stats.pending == 0 and stats.running == 0:
            return
        if stats.due == 0:
            time.sleep(LEASE)  # jobs leased to a killed worker: wait for the lease to lapse
        worker = start_worker(fleet, name, kind, concurrency=CONCURRENCY)
        assert worker.wait(timeout=300) == 0
    raise AssertionError(f"jobs left unfinished: {queue.stats()}")


def test_four_processes_never_run_a_job_twice(fleet: Fleet, tmp_path: Path) -> None:
    name = f"four-{uuid.uuid4().hex[:6]}"
    queue = fleet.queue(name)
    queue.handler(name="record")(lambda n: None)
    queue.enqueue_batch("record", [{"n": n} for n in range(2000)])
    records = tmp_path / "records"
    records.mkdir()
    gate = tmp_path / "go"
    workers = []
    for number in range(4):
        ready = tmp_path / f"ready-{number}"
        workers.append(
            start_worker(
                fleet,
                name,
                "record",
                records=str(records),
                concurrency=2,
                hold=0.001,
                ready=str(ready),
                gate=str(gate),
            )
        )
    for number, worker in enumerate(workers):
        wait_for(tmp_path / f"ready-{number}", worker)
    gate.write_text("go")
    for worker in workers:
        assert worker.wait(timeout=300) == 0
    runs = Counter(int(line) for path in records.iterdir() for line in path.read_text().split())
    assert len(runs) == 2000 and set(runs.values()) == {1}, runs.most_common(3)
    assert len(list(records.iterdir())) >= 2  # the work was shared, not done by one process
    stats = queue.stats()
    assert (stats.done, stats.pending, stats.running) == (2000, 0, 0)


def test_payouts_survive_three_kills(fleet: Fleet, tmp_path: Path) -> None:
    name = f"payouts-{uuid.uuid4().hex[:6]}"
    queue = fleet.queue(name)
    queue.handler(name="payout")(lambda entry, amount: None)
    items = [{"entry": entry, "amount": entry % 97 + 1} for entry in range(PAYOUTS)]
    batch = queue.enqueue_batch(
        "payout", items, key=lambda item: f"payout-{item['entry']}", batch=name
    )
    again = queue.enqueue_batch(
        "payout", items, key=lambda item: f"payout-{item['entry']}", batch=name
    )
    assert again.ids == batch.ids  # a restarted producer adds nothing
    for kill, entry in enumerate([2500, 5000, 7500]):
        marker = tmp_path / f"paused-{kill}"
        worker = start_worker(
            fleet,
            name,
            "payout",
            pause_entry=entry,
            pause_marker=str(marker),
            concurrency=CONCURRENCY,
        )
        wait_for(marker, worker)
        os.kill(worker.pid, signal.SIGKILL)  # mid-job: its payout written, not committed
        assert worker.wait(timeout=30) == -signal.SIGKILL
    drain(fleet, queue, name, "payout")
    progress = queue.batch(name).progress()
    assert (progress.done, progress.dead, progress.percent) == (PAYOUTS, 0, 100.0)
    paid = paid_counts(fleet)
    assert set(paid) == set(range(PAYOUTS)), "every entry paid"
    doubles = {entry: count for entry, count in paid.items() if count > 1}
    if fleet.name == "redis":
        # No transaction to join: a job in flight at a kill may have paid before it died.
        assert sum(count - 1 for count in doubles.values()) <= 3 * CONCURRENCY
    else:
        assert doubles == {}, "nothing paid twice"


def paid_counts(fleet: Fleet) -> Counter[int]:
    if fleet.name == "sqlite":
        path = fleet.store.removeprefix("sqlite:///")
        with sqlite3.connect(path) as connection:
            rows = connection.execute(
                "SELECT entry, count(*) FROM payouts GROUP BY entry"
            ).fetchall()
        return Counter({entry: count for entry, count in rows})
    if fleet.name == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES_DSN) as connection:
            rows = connection.execute(
                f"SELECT entry, count(*) FROM {fleet.payouts} GROUP BY entry"
            ).fetchall()
        return Counter({entry: count for entry, count in rows})
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        counts = client.hgetall(fleet.payouts)
    finally:
        client.close()
    return Counter({int(entry): int(count) for entry, count in counts.items()})


def test_the_control_pays_twice_without_the_shared_transaction(tmp_path: Path) -> None:
    """What the payout test guards against: completing the job in a second commit."""
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE payouts (entry INTEGER NOT NULL, amount INTEGER, worker INTEGER)"
        )
    fleet = Fleet("sqlite", f"sqlite:///{path}", {"timeout": 30.0})
    queue = fleet.queue("control")
    queue.handler(name="unsafe_payout")(lambda entry, amount: None)
    queue.enqueue_batch("unsafe_payout", [{"entry": entry, "amount": 1} for entry in range(20)])
    marker = tmp_path / "paused"
    worker = start_worker(
        fleet, "control", "unsafe_payout", pause_entry=10, pause_marker=str(marker), concurrency=1
    )
    wait_for(marker, worker)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    drain(fleet, queue, "control", "unsafe_payout")
    paid = paid_counts(fleet)
    assert set(paid) == set(range(20)) and paid[10] == 2  # the killed entry, paid twice
