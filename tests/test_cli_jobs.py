"""``python -m resilience jobs``: run as operators run it (a few subprocesses on a
real SQLite file), the rest through the same ``main`` in process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import resilience as rs
from resilience.__main__ import main
from resilience._cli_jobs import _span, parse_duration
from resilience.jobs import JobQueue
from resilience.testing import FakeClock

from .backends import REDIS_URL, STORE_TIMEOUT, require_postgres, require_redis

JOBS = [sys.executable, "-m", "resilience", "jobs"]
DAY = 86400.0
LONG = "x" * 80  # makes an error longer than a list shows


@dataclass
class Prepared:
    """The ids of the jobs :func:`_prepare` left in queue ``emails``."""

    old_done: list[int]
    old_dead: int
    new_dead: int
    new_done: int
    later: int


def _prepare(store: Any, clock: FakeClock) -> Prepared:
    """Jobs dated by ``clock`` (the store's): two done and one dead ten days ago;
    one dead and one done a minute ago; one pending, due in an hour."""
    queue = JobQueue(
        "emails",
        store=store,
        retry=rs.Retry(attempts=2, backoff=rs.Backoff.constant(0.0)),
        retention=None,
    )

    @queue.handler(name="send_email")
    def send(to: str) -> None:
        if to.startswith("bad"):
            raise ValueError(f"mailbox {to} {LONG} does not exist\nsecond line of detail")

    old_done = [queue.enqueue(send, to=f"ok{i}@example.com") for i in range(2)]
    old_dead = queue.enqueue(send, to="bad0@example.com", key="k0")
    assert queue.run_once().claimed == 3
    clock.advance(10 * DAY - 60.0)  # a minute ago, on the wall clock
    new_dead = queue.enqueue(send, to="bad1@example.com")
    new_done = queue.enqueue(send, to="ok2@example.com")
    assert queue.run_once().claimed == 2
    later = queue.enqueue(send, to="later@example.com", delay=3600.0)
    return Prepared(old_done, old_dead, new_dead, new_done, later)


def _clock() -> FakeClock:
    """Ten days ago: far from zero, and what the command line reads as "10d ago"."""
    return FakeClock(time.time() - 10 * DAY)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> tuple[str, Prepared]:
    from resilience.storage.sqlite import SQLiteStore

    path = tmp_path / "jobs.db"
    clock = _clock()
    store = SQLiteStore(path, clock=clock)
    try:
        prepared = _prepare(store, clock)
    finally:
        store.close()
    return f"sqlite:///{path}", prepared


def _queue(url: str) -> JobQueue:
    return JobQueue("emails", store=url, retention=None)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(["jobs", *args])`` in process: exit status, stdout, stderr."""
    try:
        status = main(["jobs", *args])
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


# -- as a subprocess ---------------------------------------------------------------------


def test_stats_dead_letters_and_replay_from_the_command_line(
    sqlite_url: tuple[str, Prepared],
) -> None:
    url, jobs = sqlite_url
    stats = _run("--store", url, "emails", "stats")
    assert stats.returncode == 0, stats.stderr
    for name, count in (("pending", 1), ("running", 0), ("done", 3), ("dead", 2), ("due", 0)):
        assert re.search(rf"^{name}\s+{count}$", stats.stdout, re.M), stats.stdout
    assert re.search(r"^lag\s+0s$", stats.stdout, re.M), stats.stdout

    # The store from the environment; --json after the command.
    dead = _run("emails", "list", "--state", "dead", "--json", env={"RESILIENCE_STORE": url})
    assert dead.returncode == 0, dead.stderr
    listed = json.loads(dead.stdout)
    assert [job["id"] for job in listed] == [jobs.old_dead, jobs.new_dead]  # by when they died
    for job in listed:
        assert job["state"] == "dead"
        assert job["reason"] == "not_retryable"
        assert job["last_error"].startswith("ValueError: mailbox bad")
        assert job["last_error"].endswith("second line of detail")  # whole, in JSON
        assert job["kwargs"]["to"].startswith("bad")
        assert isinstance(job["finished_at"], float)

    replay = _run("--store", url, "emails", "replay", str(jobs.new_dead))
    assert replay.returncode == 0, replay.stderr
    assert f"job {jobs.new_dead} of queue 'emails' replayed" in replay.stdout
    with _queue(url) as queue:
        job = queue.job(jobs.new_dead)
        assert job is not None
        assert (job.state, job.attempts, job.reason) == ("pending", 0, None)
        assert queue.stats().dead == 1


def test_an_unreachable_store_exits_3_without_its_password() -> None:
    result = _run("--store", "redis://:hunter2secret@127.0.0.1:1/0", "emails", "stats")
    assert result.returncode == 3, result.stderr
    assert "unavailable" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_a_bad_duration_is_a_usage_error(sqlite_url: tuple[str, Prepared]) -> None:
    url, _ = sqlite_url
    result = _run("--store", url, "emails", "purge", "--older-than", "1x")
    assert result.returncode == 2
    assert "'1x' is not a duration" in result.stderr
    assert _queue(url).stats().total == 6  # nothing purged


# -- in process --------------------------------------------------------------------------


def test_list_truncates_errors_and_show_prints_them_whole(
    sqlite_url: tuple[str, Prepared], capsys: pytest.CaptureFixture[str]
) -> None:
    url, jobs = sqlite_url
    status, out, _ = _cli(capsys, "--store", url, "emails", "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TRIES", "HANDLER", "CREATED", "WHEN", "ERROR"]
    assert len(lines) == 7
    dead_line = next(line for line in lines if line.lstrip().startswith(f"{jobs.old_dead} "))
    assert "dead (not_retryable)" in dead_line
    assert "ValueError: mailbox bad0" in dead_line and dead_line.endswith("...")
    assert "second line" not in out
    assert "10d ago" in dead_line
    later_line = next(line for line in lines if line.lstrip().startswith(f"{jobs.later} "))
    assert "pending" in later_line and re.search(r"due in 5\dm", later_line)
    # Columns line up: every row's HANDLER starts where the header's does.
    column = lines[0].index("HANDLER")
    assert all(line[column:].startswith("send_email") for line in lines[1:])

    status, out, _ = _cli(capsys, "--store", url, "emails", "show", str(jobs.old_dead))
    assert status == 0
    assert re.search(r"^state\s+dead \(reason: not_retryable\)$", out, re.M), out
    assert re.search(
        r"^error\s+ValueError: mailbox bad0@example.com x{80} does not exist$", out, re.M
    )
    assert re.search(r"^\s+second line of detail$", out, re.M), out
    assert re.search(r"^finished\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(10d ago\)$", out, re.M), out
    assert re.search(r"^key\s+k0$", out, re.M)

    status, out, _ = _cli(capsys, "--store", url, "emails", "show", str(jobs.old_dead), "--json")
    shown = json.loads(out)
    assert shown["id"] == jobs.old_dead and shown["key"] == "k0"
    assert shown["last_error_class"] == "permanent"
    assert shown["kwargs"] == {"to": "bad0@example.com"}

    status, out, _ = _cli(capsys, "--store", url, "emails", "list", "--limit", "2")
    assert status == 0
    assert "(2 of 6 jobs shown: --limit N for more)" in out


def test_unknown_ids_and_jobs_that_are_not_dead_exit_1(
    sqlite_url: tuple[str, Prepared], capsys: pytest.CaptureFixture[str]
) -> None:
    url, jobs = sqlite_url
    for command in ("show", "replay"):
        status, out, err = _cli(capsys, "--store", url, "emails", command, "999999")
        assert (status, out) == (1, "")
        assert "no job 999999 in queue 'emails'" in err
    status, _, err = _cli(capsys, "--store", url, "emails", "replay", str(jobs.new_done))
    assert status == 1
    assert f"job {jobs.new_done} of queue 'emails' is done, not dead" in err
    status, _, err = _cli(capsys, "--store", url, "other", "show", str(jobs.new_done))
    assert status == 1 and "queue 'other'" in err


def test_purge_by_age_then_replay_all(
    sqlite_url: tuple[str, Prepared], capsys: pytest.CaptureFixture[str]
) -> None:
    url, jobs = sqlite_url
    status, out, _ = _cli(capsys, "--store", url, "emails", "purge", "--older-than", "1d")
    assert status == 0
    assert out.strip() == "purged 3 jobs of queue 'emails' finished more than 1d ago"
    with _queue(url) as queue:
        assert [queue.job(i) for i in [*jobs.old_done, jobs.old_dead]] == [None] * 3
        assert queue.job(jobs.new_dead) is not None

    status, out, _ = _cli(capsys, "--store", url, "emails", "replay-all", "--json")
    assert (status, json.loads(out)) == (0, {"queue": "emails", "replayed": 1})
    status, out, _ = _cli(capsys, "--store", url, "emails", "replay-all")
    assert (status, out.strip()) == (0, "no dead jobs in queue 'emails': nothing to replay")
    with _queue(url) as queue:
        job = queue.job(jobs.new_dead)
        assert job is not None and job.state == "pending"

    status, out, _ = _cli(capsys, "--json", "--store", url, "emails", "purge")
    assert json.loads(out) == {"queue": "emails", "purged": 1, "older_than": 0.0}
    status, out, _ = _cli(capsys, "--store", url, "emails", "purge")
    assert (status, out.strip()) == (0, "purged 0 finished jobs of queue 'emails'")
    status, out, _ = _cli(capsys, "--store", url, "emails", "stats", "--json")
    stats = json.loads(out)
    assert {k: stats[k] for k in ("pending", "running", "done", "dead", "total")} == {
        "pending": 2,
        "running": 0,
        "done": 0,
        "dead": 0,
        "total": 2,
    }
    assert stats["due"] == 1 and stats["queue"] == "emails" and stats["lag"] >= 0.0


def test_queues_are_listed_with_their_counts(
    sqlite_url: tuple[str, Prepared], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = sqlite_url
    with JobQueue("alerts", store=url, retention=None) as alerts:
        alerts.handler(name="page")(lambda: None)
        alerts.enqueue("page")
    status, out, _ = _cli(capsys, "--store", url)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["QUEUE", "PENDING", "RUNNING", "DONE", "DEAD", "DUE", "LAG"]
    assert lines[1].split()[:6] == ["alerts", "1", "0", "0", "0", "1"]
    assert lines[2].split() == ["emails", "1", "0", "3", "2", "0", "0s"]
    assert len({len(line) for line in lines}) == 1  # right-aligned to one width

    status, out, _ = _cli(capsys, "--store", url, "queues", "--json")
    listed = json.loads(out)
    assert [q["queue"] for q in listed] == ["alerts", "emails"]
    assert listed[1] == {
        "queue": "emails",
        "pending": 1,
        "running": 0,
        "done": 3,
        "dead": 2,
        "due": 0,
        "lag": 0.0,
        "total": 6,
    }


def test_usage_errors_exit_2(
    sqlite_url: tuple[str, Prepared],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = sqlite_url
    monkeypatch.delenv("RESILIENCE_STORE", raising=False)
    cases = {
        ("emails", "stats"): "--store URL, or set RESILIENCE_STORE",
        ("--store", url, "stats"): "stats needs a QUEUE",
        ("--store", url, "emails"): "invalid choice: 'emails'",
        ("--store", url, "emails", "queues"): "give no QUEUE",
        ("--store", url, "emails", "list", "--limit", "0"): "give a number >= 1",
        ("--store", url, "emails", "list", "--state", "lost"): "invalid choice: 'lost'",
        ("--store", url, "emails", "show", "seven"): "is not a job id",
        ("--store", url, "emails", "purge", "--older-than=-1d"): "is not a duration",
        ("--store", "nosuch://x", "emails", "stats"): "unknown scheme",
        ("--store", url, "--table", "t", "emails", "stats"): "table: not an option",
    }
    for args, message in cases.items():
        status, out, err = _cli(capsys, *args)
        assert (status, out) == (2, ""), args
        assert message in err, (args, err)


def test_a_missing_sqlite_file_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.db"
    status, out, err = _cli(capsys, "--store", f"sqlite:///{path}", "emails", "stats")
    assert (status, out) == (3, "")
    assert "no database file" in err
    assert not path.exists()


def test_a_password_never_reaches_a_usage_message(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://bob:pw-never-shown@127.0.0.1:1/db"
    status, _, err = _cli(capsys, "--store", url, "--table", "t" * 41, "emails", "stats")
    assert status == 2
    assert "pw-never-shown" not in err and "table" in err
    status, _, err = _cli(capsys, "--store", url.replace("@", "@[::1"), "emails", "stats")
    assert status == 2
    assert "pw-never-shown" not in err and "cannot be read" in err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1d", DAY),
        ("1w", 7 * DAY),
        ("1h30m", 5400.0),
        (" 2H ", 7200.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "m", "-5", "nan", "inf", "1d 2h", "1.2.3s"])
def test_bad_durations(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_spans_for_people() -> None:
    cases = {0: "0s", 12.9: "12s", 192: "3m 12s", 2700: "45m", 7500: "2h 5m", 14 * 3600: "14h"}
    cases.update({3 * DAY + 4 * 3600: "3d 4h", 12 * DAY + 5: "12d", 2 * DAY: "2d"})
    assert {seconds: _span(seconds) for seconds in cases} == cases


# -- the server stores -------------------------------------------------------------------


def test_against_postgres(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = require_postgres()
    from resilience.storage.postgres import PostgresStore

    from .backends import drop_postgres_tables

    table = f"cli_{uuid.uuid4().hex[:10]}"
    clock = _clock()
    store = PostgresStore(dsn, table=table, job_clock=clock, timeout=STORE_TIMEOUT)
    try:
        jobs = _prepare(store, clock)
        args = ("--store", dsn, "--table", table)
        _check_server_store(capsys, args, jobs)
    finally:
        store.close()
        drop_postgres_tables(dsn, table)


def test_against_redis(capsys: pytest.CaptureFixture[str]) -> None:
    url = require_redis()
    import redis as redis_py

    from resilience.storage.redis import RedisStore

    prefix = f"cli_{uuid.uuid4().hex[:10]}"
    clock = _clock()
    store = RedisStore(url, prefix=prefix, job_clock=clock, timeout=STORE_TIMEOUT)
    try:
        jobs = _prepare(store, clock)
        separator = "&" if "?" in REDIS_URL else "?"
        _check_server_store(capsys, ("--store", f"{url}{separator}prefix={prefix}"), jobs)
    finally:
        store.close()
        client = redis_py.Redis.from_url(url)
        try:
            names = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            if names:
                client.delete(*names)
        finally:
            client.close()


def _check_server_store(
    capsys: pytest.CaptureFixture[str], store: tuple[str, ...], jobs: Prepared
) -> None:
    status, out, err = _cli(capsys, *store, "emails", "stats", "--json")
    assert status == 0, err
    stats = json.loads(out)
    assert (stats["pending"], stats["done"], stats["dead"], stats["due"]) == (1, 3, 2, 0)
    status, out, _ = _cli(capsys, *store, "emails", "list", "--state", "dead")
    assert status == 0 and "dead (not_retryable)" in out
    status, out, _ = _cli(capsys, *store, "emails", "replay", str(jobs.old_dead))
    assert status == 0, out
    status, _, err = _cli(capsys, *store, "emails", "replay", str(jobs.old_dead))
    assert status == 1 and "is pending, not dead" in err
    status, out, _ = _cli(capsys, *store, "emails", "purge", "--older-than", "1d", "--json")
    assert json.loads(out)["purged"] == 2  # the old done ones; the old dead one is pending now
    status, out, _ = _cli(capsys, *store)
    assert status == 0 and out.splitlines()[1].split()[:5] == ["emails", "2", "0", "1", "1"]
