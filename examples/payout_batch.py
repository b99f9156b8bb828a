"""A payout batch: 10,000 entries, 500 per run, each paid exactly once, through restarts.

Each entry's handler writes its payout row and completes its job in one SQLite
transaction on the file that holds the jobs: the job is done if and only if the
row is committed, so a crash at any point pays nothing twice and forgets
nothing. Re-enqueueing the batch after a restart adds nothing (idempotency keys).

Run it: ``python examples/payout_batch.py [FILE]``: it stops half-way, builds a
new queue on the same file (as a restarted process would) and finishes.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

from resilience.jobs import Batch, JobQueue, current
from resilience.storage.sqlite import SQLiteStore

BATCH = "payroll-2026-12"


def payout_queue(store: SQLiteStore) -> JobQueue:
    """The queue, on the SQLite file that also holds the payouts table."""
    path = store.path
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS payouts"
            " (entry INTEGER PRIMARY KEY, account TEXT NOT NULL, cents INTEGER NOT NULL)"
        )
    queue = JobQueue("payouts", store=store)

    @queue.handler(name="pay")
    def pay(entry: int, account: str, cents: int) -> None:
        # `with connection`: one transaction, committed at the end or rolled back.
        with closing(sqlite3.connect(path, timeout=30)) as connection, connection:
            connection.execute("INSERT INTO payouts VALUES (?, ?, ?)", (entry, account, cents))
            current().complete(connection=connection)  # done if and only if this commits

    return queue


def entries(count: int) -> list[dict[str, Any]]:
    return [
        {"entry": n, "account": f"acct-{n % 997}", "cents": 100 + n % 4900} for n in range(count)
    ]


def enqueue(queue: JobQueue, count: int) -> Batch:
    """The whole batch; again after a restart, it adds only what is missing."""
    return queue.enqueue_batch(
        "pay", entries(count), key=lambda item: f"payout-{item['entry']}", batch=BATCH
    )


def run(queue: JobQueue, until: float = 100.0) -> None:
    """Runs of 500, as cron would start them, until ``until`` percent of the batch is
    finished or nothing is due (retries wait for a later run); progress after each."""
    batch = queue.batch(BATCH)
    while batch.progress().percent < until and queue.run_once(limit=500).claimed:
        now = batch.progress()
        print(f"  {now.done:>6} of {now.total} paid, {now.dead} dead ({now.percent:.0f} %)")


def paid(path: Path) -> tuple[int, int]:
    """Payout rows, and the cents they add up to."""
    with closing(sqlite3.connect(path)) as connection:
        rows, cents = connection.execute("SELECT count(*), sum(cents) FROM payouts").fetchone()
        return rows, cents or 0


def main(count: int = 10_000, path: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = path or Path(tmp) / "payouts.db"
        with closing(SQLiteStore(file)) as store:
            first = payout_queue(store)
            enqueue(first, count)
            print(f"{count} payouts enqueued; running half of them")
            run(first, until=50)
        print("stopped half-way; a new queue on the same file, as after a restart")
        with closing(SQLiteStore(file)) as store:
            again = payout_queue(store)
            print(f"re-enqueued: still {enqueue(again, count).progress().total} entries")
            run(again)
        rows, cents = paid(file)
        print(f"{rows} payouts, {cents / 100:,.2f} in total, each entry once")


if __name__ == "__main__":
    main(path=Path(sys.argv[1]) if len(sys.argv) > 1 else None)
