"""A job queue worker process for the fleet tests (tests/test_jobs_fleet.py).

``python -m tests.jobs_worker SPEC_JSON``: SPEC_JSON names the store (URL and
options), the queue, the handler's kind and where it records its effects:

* ``payout``: the handler pays an entry exactly once: it writes the payout row
  and completes its job in one transaction on the store's own database (SQLite
  or PostgreSQL); on Redis, where that cannot be, it counts the payment in a
  Redis hash (at least once).
* ``record``: the handler appends ``job_id`` to a file of its own (one per
  process), so the test can count how many times each job ran.

With ``pause_entry`` set, the handler of that entry touches ``pause_marker``
after writing its payout row and then hangs before committing: the test kills
the process with SIGKILL right there, in the worst place.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from typing import Any

from resilience.jobs import JobQueue, current
from resilience.storage import store_from_url


def build_queue(spec: dict[str, Any]) -> JobQueue:
    store = store_from_url(spec["store"], **spec.get("options", {}))
    return JobQueue(spec["queue"], store=store, lease=spec.get("lease", 2.0), poll_interval=0.05)


def hang_if_asked(spec: dict[str, Any], entry: int) -> None:
    if spec.get("pause_entry") == entry:
        with open(spec["pause_marker"], "w") as marker:
            marker.write(str(os.getpid()))
        time.sleep(3600)  # killed here, with the payout written but not committed


def payout_handler(spec: dict[str, Any]) -> Any:
    url: str = spec["store"]
    local = threading.local()

    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")

        def pay(entry: int, amount: int) -> None:
            connection = getattr(local, "connection", None)
            if connection is None:
                connection = local.connection = sqlite3.connect(
                    path, timeout=30, isolation_level=None
                )
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    "INSERT INTO payouts (entry, amount, worker) VALUES (?, ?, ?)",
                    (entry, amount, os.getpid()),
                )
                hang_if_asked(spec, entry)
                current().complete(connection=connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

        return pay

    if url.startswith("postgres"):
        import psycopg

        table = spec["payouts"]

        def pay(entry: int, amount: int) -> None:
            connection = getattr(local, "connection", None)
            if connection is None:
                connection = local.connection = psycopg.connect(url)
            with connection.transaction():
                connection.execute(
                    f"INSERT INTO {table} (entry, amount, worker) VALUES (%s, %s, %s)",
                    (entry, amount, os.getpid()),
                )
                hang_if_asked(spec, entry)
                current().complete(connection=connection)

        return pay

    import redis

    client = redis.Redis.from_url(spec["effects"])

    def pay(entry: int, amount: int) -> None:
        client.hincrby(spec["payouts"], str(entry), 1)
        hang_if_asked(spec, entry)

    return pay


def unsafe_payout_handler(spec: dict[str, Any]) -> Any:
    """The control: pays in a transaction of its own, then lets the queue complete
    the job afterwards (two commits): a kill between them pays twice."""
    path = spec["store"].removeprefix("sqlite:///")

    def pay(entry: int, amount: int) -> None:
        with sqlite3.connect(path, timeout=30) as connection:
            connection.execute(
                "INSERT INTO payouts (entry, amount, worker) VALUES (?, ?, ?)",
                (entry, amount, os.getpid()),
            )
        hang_if_asked(spec, entry)

    return pay


def record_handler(spec: dict[str, Any]) -> Any:
    path = os.path.join(spec["records"], f"{os.getpid()}.txt")

    def record(n: int) -> None:
        line = f"{current().job.id}\n".encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)
        time.sleep(spec.get("hold", 0.0))

    return record


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    queue = build_queue(spec)
    handler = {
        "payout": payout_handler,
        "unsafe_payout": unsafe_payout_handler,
        "record": record_handler,
    }[spec["kind"]](spec)
    queue.handler(name=spec["kind"])(handler)
    if spec.get("ready"):
        with open(spec["ready"], "w") as ready:
            ready.write("ok")
    while spec.get("gate") and not os.path.exists(spec["gate"]):
        time.sleep(0.01)  # every worker starts claiming at once
    queue.work(concurrency=spec.get("concurrency", 4), until_empty=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
