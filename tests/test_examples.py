"""The examples under examples/ run, and do what docs/jobs.md says they do.

Each example is driven on a fake clock where it has schedules, with a small
workload; the outcomes are checked from what the fake services recorded and
from the jobs' records.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from examples import email_queue, job_api, payout_batch, task_queue, webhook_retries
from resilience.storage import MemoryStore
from resilience.storage.sqlite import SQLiteStore
from resilience.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
START = 1_700_000_000.25


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Iterator[Any]:
    """The queue's store (its jobs and the limiters' buckets), on the fake clock."""
    if request.param == "memory":
        yield MemoryStore(clock)
        return
    sqlite_store = SQLiteStore(tmp_path / "jobs.db", clock=clock)
    yield sqlite_store
    sqlite_store.close()


def most_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    most = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most


# -- email queue ---------------------------------------------------------------------------


def test_email_retry_follows_the_schedule_then_dead_letters() -> None:
    queue = email_queue.email_queue(
        MemoryStore(FakeClock(START)), email_queue.FakeSMTP(FakeClock())
    )
    down = smtplib.SMTPServerDisconnected("gone")
    delays = [queue.retry.decide(n, down).delay for n in range(1, 6)]
    assert delays == [1.0, 5.0, 30.0, 300.0, 1800.0]
    last = queue.retry.decide(6, down)
    assert not last.retry and last.reason == "attempts"


def test_email_attempt_times_on_a_dead_server(store: Any, clock: FakeClock) -> None:
    # Only the welcome mail to the dead server: its attempts follow the schedule,
    # except that one recipient's sends are 6 s apart at least (10 a minute, burst 1):
    # the 1 s and 5 s retries wait for the recipient's next token, without an attempt.
    queue, smtp = email_queue.simulate(store, clock, emails=0)
    tried = smtp.tried["nobody@down.example"]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(tried)]
    assert tried[0] == START
    assert gaps == [6.0, 6.0, 30.0, 300.0, 1800.0]
    [dead] = queue.dead_letters()
    assert (dead.attempts, dead.reason, dead.last_error_class) == (6, "attempts", "network")
    assert dead.finished_at == tried[-1]


def test_email_limits_hold_and_every_email_is_delivered_once(store: Any, clock: FakeClock) -> None:
    queue, smtp = email_queue.simulate(store, clock, emails=120)
    assert len(smtp.delivered) == len(set(smtp.delivered)) == 120
    assert len(smtp.tried["fan@example.com"]) >= 25  # the per-recipient limit had work to do
    for to, times in smtp.tried.items():
        assert most_in_window(times, 60.0) <= 10, to
    everything = [at for times in smtp.tried.values() for at in times]
    # A token bucket's promise over any window of t seconds: burst + rate / per * t.
    assert most_in_window(everything, 60.0) <= 100 + 100
    greylisted = [job for job in queue.jobs(limit=200) if "greylist" in job.kwargs["to"]]
    assert greylisted and all(job.state == "done" and job.attempts == 3 for job in greylisted)
    assert queue.stats().dead == 1


def test_email_main_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    email_queue.main(emails=30)
    out = capsys.readouterr().out
    assert "30 delivered, 1 dead" in out
    assert "nobody@down.example" in out


# -- webhooks ------------------------------------------------------------------------------


def test_webhook_answers_decide_each_delivery(store: Any, clock: FakeClock) -> None:
    with webhook_retries.receiver(clock) as server:
        queue = webhook_retries.webhook_queue(store)
        ids = {
            path: queue.enqueue("deliver", url=server.url + path, event={"id": n})
            for n, path in enumerate(webhook_retries.ANSWERS)
        }
        webhook_retries.tick(queue)
        first = {path: queue.job(job_id) for path, job_id in ids.items()}
        assert all(job is not None for job in first.values())
        ok, flaky, gone, busy = (first[p] for p in ("/ok", "/flaky", "/gone", "/busy"))
        assert ok is not None and ok.state == "done"
        # 410: permanent, dead at once.
        assert gone is not None
        assert (gone.state, gone.reason, gone.attempts) == ("dead", "not_retryable", 1)
        assert gone.last_error_class == "permanent"
        # 500: retried after the schedule's first minute.
        assert flaky is not None and flaky.state == "pending"
        assert (flaky.next_attempt_at, flaky.last_error_class) == (START + 60, "transient")
        # 429 with Retry-After: 120, longer than the first minute: waits 120 s.
        assert busy is not None and busy.state == "pending"
        assert (busy.next_attempt_at, busy.last_error_class) == (START + 120, "rate_limited")

        clock.advance(60)
        webhook_retries.tick(queue)
        clock.advance(60)
        webhook_retries.tick(queue)
        hits = {path: times for (path, _), times in server.hits.items()}
    assert hits == {
        "/ok": [START],
        "/flaky": [START, START + 60],
        "/gone": [START],
        "/busy": [START, START + 120],
    }
    assert queue.stats().done == 3


def test_webhook_schedule_reaches_a_day() -> None:
    queue = webhook_retries.webhook_queue(MemoryStore(FakeClock(START)))
    error = ConnectionResetError("reset")
    delays = [queue.retry.decide(n, error).delay for n in range(1, 6)]
    assert delays == [60.0, 300.0, 1800.0, 7200.0, 86400.0]
    assert not queue.retry.decide(6, error).retry


def test_webhook_batches_of_ten_every_five_minutes(clock: FakeClock) -> None:
    with webhook_retries.receiver(clock) as server:
        queue = webhook_retries.simulate(MemoryStore(clock), clock, server.url, hooks=24)
        hits = [at for times in server.hits.values() for at in times]
    per_tick = Counter(round(at - START) for at in hits)
    assert set(per_tick) <= {300 * n for n in range(100)}  # only on the 5-minute ticks
    assert max(per_tick.values()) == 10
    stats = queue.stats()
    assert (stats.done, stats.dead) == (18, 6)  # every /gone event is dead, the rest delivered


def test_webhook_main_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    webhook_retries.main(hooks=8)
    out = capsys.readouterr().out
    assert "6 delivered, 2 dead" in out
    assert "/gone   dead (not_retryable)" in out


# -- task queue ----------------------------------------------------------------------------


def test_tasks_run_by_priority(clock: FakeClock) -> None:
    work = task_queue.Thumbnailer()
    queue = task_queue.task_queue(MemoryStore(clock), work)
    task_queue.enqueue(queue, images=8)  # 8 archive scans (priority 9), then 2 avatars (1)
    queue.run_once(limit=2)
    assert work.ran == ["avatar0.png", "avatar1.png"]
    queue.run_once(limit=3)
    assert work.ran[2:] == ["scan0.png", "scan1.png", "scan2.png"]


def test_tasks_dead_letters_are_replayed_and_purged_after_a_day(
    store: Any, clock: FakeClock
) -> None:
    work = task_queue.Thumbnailer()
    queue = task_queue.task_queue(store, work)
    task_queue.enqueue(queue, images=20)
    task_queue.run(queue, clock)
    assert work.most_at_once <= 5
    dead = queue.dead_letters()
    assert [job.kwargs["image"] for job in dead] == ["avatar2.corrupt"]
    assert (dead[0].reason, dead[0].attempts) == ("not_retryable", 1)
    retried = [job for job in queue.jobs() if job.kwargs["image"].startswith("nfs/")]
    assert retried and all(job.state == "done" and job.attempts == 2 for job in retried)

    assert task_queue.review(queue, work) == 1
    task_queue.run(queue, clock)
    stats = queue.stats()
    assert (stats.done, stats.dead, stats.pending) == (25, 0, 0)

    assert queue.options.retention == task_queue.DAY
    finished = sorted(job.finished_at or 0.0 for job in queue.jobs())
    clock.advance(finished[0] + task_queue.DAY - clock.now())
    assert queue.purge(older_than=task_queue.DAY) == 0  # the first finished a day ago: kept
    clock.advance(finished[-1] + 1 - finished[0])
    assert queue.purge(older_than=task_queue.DAY) == 25
    assert queue.stats().total == 0


def test_tasks_main_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    task_queue.main(images=12)
    out = capsys.readouterr().out
    assert "replayed 1 dead letters" in out
    assert "purged 15; left 0" in out


# -- job API -------------------------------------------------------------------------------


def test_job_api_history_stats_and_manual_retry(store: Any, clock: FakeClock) -> None:
    api = job_api.JobAPI(store)
    low = api.submit("acme", priority=5)["id"]
    high = api.submit("globex", "json", priority=1)["id"]
    missing = api.submit("initech", attempts=1)["id"]
    pdf = api.submit("acme", "pdf", attempts=2)["id"]
    with pytest.raises(ValueError, match="priority"):
        api.submit("acme", priority=6)
    api.queue.run_once()
    assert api.exported == [("globex", "json"), ("acme", "csv")]  # by priority
    status = api.status(pdf)
    assert status is not None
    assert (status["state"], status["attempts"], status["max_attempts"]) == ("pending", 1, 2)
    clock.advance(600)
    api.queue.run_once()

    views = {job_id: api.status(job_id) for job_id in (low, high, missing, pdf)}
    assert views[pdf] == {
        "id": pdf,
        "state": "dead",
        "priority": 3,
        "attempts": 2,
        "max_attempts": 2,
        "last_error": "TimeoutError: the PDF renderer timed out",
        "reason": "attempts",
        "args": {"account": "acme", "fmt": "pdf"},
    }
    gone = views[missing]
    assert gone is not None
    assert (gone["state"], gone["reason"], gone["attempts"]) == ("dead", "not_retryable", 1)
    assert api.stats() == {"pending": 0, "running": 0, "done": 2, "dead": 2}
    assert [view["id"] for view in api.failed()] == [missing, pdf]
    assert api.status(10_000) is None

    assert not api.retry(low)  # done: nothing to retry
    api.accounts.add("initech")
    assert api.retry(missing)
    api.queue.run_once()
    again = api.status(missing)
    assert again is not None and (again["state"], again["attempts"]) == ("done", 1)
    assert api.stats()["dead"] == 1


def test_job_api_main_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    job_api.main()
    out = capsys.readouterr().out
    assert "exported, in order: [('globex', 'json'), ('acme', 'csv')]" in out
    assert "'pending': 0, 'running': 0, 'done': 3, 'dead': 1" in out


# -- payout batch -------------------------------------------------------------------------


def payout_rows(path: Path) -> Counter[int]:
    with closing(sqlite3.connect(path)) as connection:
        return Counter(entry for (entry,) in connection.execute("SELECT entry FROM payouts"))


def test_payouts_are_paid_once_through_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "payouts.db"
    with closing(SQLiteStore(path)) as store:
        first = payout_batch.payout_queue(store)
        batch = payout_batch.enqueue(first, 1000)
        assert len(batch.ids) == 1000
        payout_batch.run(first, until=50)  # one run of 500, then the process "stops"
        half = first.batch(payout_batch.BATCH).progress()
    assert (half.total, half.done, half.percent) == (1000, 500, 50.0)
    assert len(payout_rows(path)) == 500

    with closing(SQLiteStore(path)) as store:
        again = payout_batch.payout_queue(store)
        again_batch = payout_batch.enqueue(again, 1000)
        assert again_batch.ids == batch.ids  # nothing added: the keys are held
        payout_batch.run(again)
        done = again.batch(payout_batch.BATCH).progress()
        assert all(job.attempts == 1 for job in again.jobs("done", limit=1000))
    assert (done.total, done.done, done.dead, done.percent) == (1000, 1000, 0, 100.0)
    assert payout_rows(path) == Counter(range(1000))  # each entry exactly once
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].strip() == "500 of 1000 paid, 0 dead (50 %)"
    assert lines[-1].strip() == "1000 of 1000 paid, 0 dead (100 %)"


def test_payouts_survive_a_worker_killed_mid_batch(tmp_path: Path) -> None:
    # A real crash: a worker process running the example's handler is killed with
    # SIGKILL while it pays; a new queue on the file finishes the batch. The new
    # store's clock is past the dead worker's leases, so its jobs are claimed again.
    path = tmp_path / "payouts.db"
    with closing(SQLiteStore(path)) as store:
        payout_batch.enqueue(payout_batch.payout_queue(store), 1000)
    code = (
        "import sys; from resilience.storage.sqlite import SQLiteStore; "
        "from examples import payout_batch as p; "
        "p.run(p.payout_queue(SQLiteStore(sys.argv[1])))"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while len(payout_rows(path)) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    before = payout_rows(path)
    assert 300 <= len(before) < 1000

    later = FakeClock(time.time() + 3600)  # an hour on: every lease of the killed worker lapsed
    with closing(SQLiteStore(path, clock=later)) as store:
        again = payout_batch.payout_queue(store)
        payout_batch.enqueue(again, 1000)
        payout_batch.run(again)
        assert again.batch(payout_batch.BATCH).progress().percent == 100.0
        assert any(job.attempts == 2 for job in again.jobs("done", limit=1000))  # claimed again
    assert payout_rows(path) == Counter(range(1000))


def test_payout_main_prints_progress(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    payout_batch.main(count=2000, path=tmp_path / "payouts.db")
    out = capsys.readouterr().out
    assert "1000 of 2000 paid, 0 dead (50 %)" in out
    assert "re-enqueued: still 2000 entries" in out
    cents = sum(item["cents"] for item in payout_batch.entries(2000))
    assert out.rstrip().endswith(f"2000 payouts, {cents / 100:,.2f} in total, each entry once")


# -- the guide's line counts ---------------------------------------------------------------


def code_lines(path: Path) -> int:
    """Lines that are neither blank nor comments."""
    lines = path.read_text().splitlines()
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def test_the_guide_states_each_examples_line_count() -> None:
    guide = (ROOT / "docs" / "jobs.md").read_text()
    stated = {
        name: int(count)
        for name, count in re.findall(
            r"^\| \[`examples/(\w+\.py)`\]\([^)]*\) \| (\d+) \|", guide, re.M
        )
    }
    files = {path.name: code_lines(path) for path in sorted((ROOT / "examples").glob("*.py"))}
    assert stated == files
