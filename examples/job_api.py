"""A job API: what the handlers of an HTTP layer would call. Jobs have a priority
from 1 (urgent) to 5, a maximum number of attempts each, a history (state,
attempts, last error), queue statistics, and a manual retry for failed jobs.

Run it: ``python examples/job_api.py`` (on a fake clock).
"""

from __future__ import annotations

from typing import Any

import resilience as rs
from resilience.jobs import Job, JobQueue
from resilience.storage import MemoryStore
from resilience.testing import FakeClock


class JobAPI:
    """``POST /jobs``, ``GET /jobs/{id}``, ``POST /jobs/{id}/retry``, ``GET /stats``:
    each method takes and returns plain values, ready to be JSON."""

    def __init__(self, store: Any) -> None:
        retry = rs.Retry(attempts=3, backoff=rs.Backoff.exponential(30, 600), name="api")
        self.queue = JobQueue("api", store=store, retry=retry)
        self.accounts = {"acme", "globex"}
        self.exported: list[tuple[str, str]] = []
        self.queue.handler(name="export")(self.export)

    def export(self, account: str, fmt: str) -> None:
        """The work behind a job: an export of an account's data."""
        if account not in self.accounts:
            raise LookupError(f"no account {account!r}")  # permanent: no retry helps
        if fmt == "pdf":
            raise TimeoutError("the PDF renderer timed out")  # retried, up to the job's attempts
        self.exported.append((account, fmt))

    # -- the endpoints -----------------------------------------------------------------

    def submit(
        self, account: str, fmt: str = "csv", priority: int = 3, attempts: int = 3
    ) -> dict[str, Any]:
        if not 1 <= priority <= 5:
            raise ValueError("priority must be between 1 and 5")  # a 400 answer
        job_id = self.queue.enqueue(
            "export", account=account, fmt=fmt, priority=priority, attempts=attempts
        )
        return {"id": job_id, "state": "pending"}

    def status(self, job_id: int) -> dict[str, Any] | None:
        job = self.queue.job(job_id)
        return None if job is None else view(job)  # None: a 404 answer

    def retry(self, job_id: int) -> bool:
        """Run a failed (dead) job again, with its attempts reset; False (a 409) if
        the job is not dead."""
        return self.queue.replay(job_id)

    def failed(self) -> list[dict[str, Any]]:
        return [view(job) for job in self.queue.dead_letters()]

    def stats(self) -> dict[str, Any]:
        s = self.queue.stats()
        return {"pending": s.pending, "running": s.running, "done": s.done, "dead": s.dead}


def view(job: Job) -> dict[str, Any]:
    """A job's history as an API shows it."""
    return {
        "id": job.id,
        "state": job.state,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "reason": job.reason,
        "args": job.kwargs,
    }


def main() -> None:
    clock = FakeClock(1_700_000_000.0)
    api = JobAPI(MemoryStore(clock))
    ids = [
        api.submit("acme", priority=5)["id"],
        api.submit("globex", "json", priority=1)["id"],  # runs first
        api.submit("initech", attempts=1)["id"],  # no such account: dead at once
        api.submit("acme", "pdf", attempts=2)["id"],  # times out twice: dead
    ]
    api.queue.run_once()  # a worker's pass
    clock.advance(600)  # the PDF's retry falls due
    api.queue.run_once()
    print(f"exported, in order: {api.exported}")
    for job_id in ids:
        print(api.status(job_id))
    api.accounts.add("initech")  # the account exists now: retry its export by hand
    print(f"retry {ids[2]}: {api.retry(ids[2])}; retry {ids[0]} (done): {api.retry(ids[0])}")
    api.queue.run_once()
    print(api.status(ids[2]))
    print(api.stats())


if __name__ == "__main__":
    main()
