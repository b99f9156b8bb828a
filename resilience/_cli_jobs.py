"""``python -m resilience jobs``: an operator's view of durable job queues.

``jobs --store URL`` lists the queues holding jobs with their counts;
``jobs --store URL QUEUE stats|list|show ID|replay ID|replay-all|purge``
reads or operates on one queue through :class:`~resilience.jobs.JobQueue`
(built without handlers and with ``retention=None``, so nothing is purged
unless asked). Every command takes ``--json``. The store URL may come from
``RESILIENCE_STORE``.

Exit statuses: 0 ok; 1 the job asked for is not there, or not in a state the
command can act on (the message says why); 2 bad usage; 3 the store did not
answer (its message, which never holds a password).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError, StoreUnavailable
from .jobs import Job, JobQueue, QueueStats
from .storage.jobs import JOB_STATES, JobStore

__all__ = ["add_arguments", "parse_duration", "run_jobs"]

STORE_ENV = "RESILIENCE_STORE"
"""The environment variable naming the store when ``--store`` is not given."""

EXIT_OK = 0
EXIT_NOT_FOUND = 1  # no such job, or not in a state the command acts on
EXIT_USAGE = 2
EXIT_STORE_UNAVAILABLE = 3

ERROR_WIDTH = 60
"""Characters of an error shown in a list (``show`` prints it whole)."""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhdw])")

COMMANDS_HELP = """\
commands (QUEUE first, then the command; --store and --json go anywhere):
  jobs [queues]                       every queue holding jobs, with its counts
  jobs QUEUE stats                    counts by state, due jobs and lag
  jobs QUEUE list [--state STATE] [--limit N]
                                      jobs by id (dead ones by when they died)
  jobs QUEUE show ID                  one job in full, its last error included
  jobs QUEUE replay ID                a dead job back to pending, due now
  jobs QUEUE replay-all               every dead job back to pending
  jobs QUEUE purge [--older-than D]   remove done and dead jobs finished D ago or
                                      more (default 0: every finished job)

durations: seconds (90, 1.5) or with a unit: 30s, 15m, 2h, 1d, 1w, 1h30m.
exit status: 0 ok; 1 the job asked for is not there or not in a state the
command acts on; 2 bad usage; 3 the store did not answer.
"""


class _Failed(Exception):
    """The command could not do what it was asked: a message and an exit status."""

    def __init__(self, message: str, status: int = EXIT_NOT_FOUND) -> None:
        super().__init__(message)
        self.status = status


# -- arguments ------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``1.5``, ``30s``, ``15m``, ``2h``, ``1d``, ``1w``, ``1h30m``."""
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _DURATION_PART.findall(cleaned)
        if not parts or "".join(number + unit for number, unit in parts) != cleaned:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration: give seconds (90) or a number with a unit "
                "s, m, h, d or w (30s, 15m, 2h, 1d, 1w, 1h30m)"
            ) from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is a finite number >= 0")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number >= 1")
    return value


def _job_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a whole number)") from None


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    """--store and --json, on the jobs parser and again after each command."""
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help=f"the queues' store: sqlite:///jobs.db, postgresql://…, redis://… "
        f"(default: ${STORE_ENV})",
    )
    parser.add_argument(
        "--table",
        metavar="NAME",
        default=default,
        help="a PostgreSQL store's table= option (Redis: ?prefix= in the URL)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if default is None else default,
        help="print JSON (job times in seconds since the epoch, on the store's clock)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jobs`` command's arguments on ``parser``."""
    _common(parser, None)
    parser.add_argument("queue", nargs="?", metavar="QUEUE", help="the queue's name")
    parser.set_defaults(jobs_parser=parser)
    # Given after the command too, they must not reset what was given before it.
    after = argparse.ArgumentParser(add_help=False)
    _common(after, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="action", metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, parents=[after])

    command("queues", "every queue holding jobs, with its counts (the default without QUEUE)")
    command("stats", "counts by state, due jobs and lag")
    listing = command("list", "jobs by id (dead ones by when they died)")
    listing.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    listing.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N jobs (100)"
    )
    command("show", "one job in full, its last error included").add_argument(
        "id", type=_job_id, metavar="ID"
    )
    command("replay", "a dead job back to pending, due now, its attempts reset").add_argument(
        "id", type=_job_id, metavar="ID"
    )
    command("replay-all", "every dead job of the queue back to pending")
    command("purge", "remove done and dead jobs finished long enough ago").add_argument(
        "--older-than",
        type=parse_duration,
        default=0.0,
        metavar="DURATION",
        help="finished at least this long ago: 30s, 15m, 2h, 1d, 1w or seconds "
        "(default 0: every finished job)",
    )


# -- running --------------------------------------------------------------------------------


def run_jobs(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the parsed ``jobs`` command: its exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    parser: argparse.ArgumentParser = args.jobs_parser
    url = _check_usage(args, parser)
    try:
        store = _open_store(url, args.table)
        try:
            _dispatch(args, store, out)
        finally:
            _close(store)
    except _Failed as failure:
        print(f"error: {failure}", file=err)
        return failure.status
    except StoreUnavailable as error:
        print(f"error: {_hide_password(str(error), url)}", file=err)
        return EXIT_STORE_UNAVAILABLE
    except ConfigurationError as error:
        parser.error(_hide_password(str(error), url))  # exits with EXIT_USAGE
    return EXIT_OK


def _check_usage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.action is None and args.queue is not None:
        parser.error(f"give a command after QUEUE: jobs {args.queue} stats|list|show|…")
    if args.action == "queues" and args.queue is not None:
        parser.error("queues lists every queue: give no QUEUE")
    if args.action not in (None, "queues") and args.queue is None:
        parser.error(f"{args.action} needs a QUEUE: jobs QUEUE {args.action} …")
    url: str | None = args.store or os.environ.get(STORE_ENV) or None
    if url is None:
        parser.error(f"give the store: --store URL, or set {STORE_ENV}")
    return url


def _open_store(url: str, table: str | None) -> Any:
    from .storage import store_from_url
    from .storage.sqlite import SQLiteStore

    # The pool logs each failed connection attempt; the StoreUnavailable says it once.
    pool_log = logging.getLogger("psycopg.pool")
    if pool_log.level == logging.NOTSET:
        pool_log.setLevel(logging.ERROR)
    try:
        store = store_from_url(url) if table is None else store_from_url(url, table=table)
    except ValueError as error:  # urllib's own refusals (a bad IPv6 host); never the URL
        raise _Failed(f"the store URL cannot be read: {error}", EXIT_USAGE) from None
    if isinstance(store, SQLiteStore) and not Path(store.path).exists():
        # Opening would create an empty database: a mistyped path would read as "no jobs".
        raise StoreUnavailable(_hide_password(url, url), f"no database file at {str(store.path)!r}")
    return store


def _close(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _dispatch(args: argparse.Namespace, store: Any, out: TextIO) -> None:
    if args.queue is None:
        _queues(store, args, out)
        return
    queue = JobQueue(args.queue, store=store, retention=None)
    actions: dict[str, Callable[[JobQueue, argparse.Namespace, TextIO], None]] = {
        "stats": _stats,
        "list": _list,
        "show": _show,
        "replay": _replay,
        "replay-all": _replay_all,
        "purge": _purge,
    }
    actions[args.action](queue, args, out)


# -- commands ------------------------------------------------------------------------------


def _queues(store: Any, args: argparse.Namespace, out: TextIO) -> None:
    jobs: JobStore = getattr(store, "jobs", store)  # a MemoryStore keeps its jobs apart
    names = jobs.job_queues()
    stats = [(name, JobQueue(name, store=store, retention=None).stats()) for name in names]
    if args.json:
        _print_json([{"queue": name, **_stats_fields(s)} for name, s in stats], out)
        return
    if not stats:
        print("no queue holds any job", file=out)
        return
    header = ["QUEUE", "PENDING", "RUNNING", "DONE", "DEAD", "DUE", "LAG"]
    rows = [
        [name, *(str(n) for n in (s.pending, s.running, s.done, s.dead, s.due)), _span(s.lag)]
        for name, s in stats
    ]
    _table([header, *rows], out, right=frozenset(range(1, 7)))


def _stats(queue: JobQueue, args: argparse.Namespace, out: TextIO) -> None:
    stats = queue.stats()
    if args.json:
        _print_json({"queue": queue.name, **_stats_fields(stats)}, out)
        return
    lines = [
        ("queue", queue.name),
        ("pending", str(stats.pending)),
        ("running", str(stats.running)),
        ("done", str(stats.done)),
        ("dead", str(stats.dead)),
        ("total", str(stats.total)),
        ("due", str(stats.due)),
        ("lag", _span(stats.lag)),
    ]
    _pairs(lines, out)
    if stats.total == 0:
        print(f"(queue {queue.name!r} holds no jobs)", file=out)


def _list(queue: JobQueue, args: argparse.Namespace, out: TextIO) -> None:
    jobs = queue.jobs(args.state, args.limit)
    if args.json:
        _print_json([_job_fields(job) for job in jobs], out)
        return
    what = "jobs" if args.state is None else f"{args.state} jobs"
    if not jobs:
        print(f"no {what} in queue {queue.name!r}", file=out)
        return
    now = time.time()
    header = ["ID", "STATE", "TRIES", "HANDLER", "CREATED", "WHEN", "ERROR"]
    rows = [_job_row(job, now) for job in jobs]
    _table([header, *rows], out, right=frozenset({0, 2}))
    if len(jobs) == args.limit:
        stats = queue.stats()
        total = stats.total if args.state is None else getattr(stats, args.state)
        if total > len(jobs):
            print(f"({len(jobs)} of {total} {what} shown: --limit N for more)", file=out)


def _show(queue: JobQueue, args: argparse.Namespace, out: TextIO) -> None:
    job = _found(queue, args.id)
    if args.json:
        _print_json(_job_fields(job), out)
        return
    now = time.time()
    state = job.state if job.reason is None else f"{job.state} (reason: {job.reason})"
    tries = str(job.attempts) + ("" if job.max_attempts is None else f" of {job.max_attempts}")
    lease = "-"
    if job.lease_owner is not None:
        lease = f"{job.lease_owner} until {_when(job.lease_until, now)}"
    lines = [
        ("job", f"{job.id} of queue {job.queue!r}"),
        ("state", state),
        ("handler", job.handler),
        ("kwargs", job.payload),
        ("key", _dash(job.key)),
        ("priority", str(job.priority)),
        ("attempts", tries),
        ("batch", _dash(job.batch)),
        ("created", _when(job.created_at, now)),
        ("next attempt", _when(job.next_attempt_at, now)),
        ("lease", lease),
        ("finished", _when(job.finished_at, now)),
        ("error class", _dash(job.last_error_class)),
        ("error", _dash(job.last_error)),
        ("trace", _dash(job.trace)),
    ]
    _pairs(lines, out)


def _replay(queue: JobQueue, args: argparse.Namespace, out: TextIO) -> None:
    job = _found(queue, args.id)
    if job.state != "dead":
        raise _Failed(
            f"job {job.id} of queue {queue.name!r} is {job.state}, not dead: "
            "only dead jobs can be replayed"
        )
    if not queue.replay(job.id):
        raise _Failed(f"job {job.id} of queue {queue.name!r} is no longer dead (replayed already?)")
    if args.json:
        _print_json({"queue": queue.name, "id": job.id, "replayed": True}, out)
        return
    print(f"job {job.id} of queue {queue.name!r} replayed: pending, due now", file=out)


def _replay_all(queue: JobQueue, args: argparse.Namespace, out: TextIO) -> None:
    count = queue.replay_all()
    if args.json:
        _print_json({"queue": queue.name, "replayed": count}, out)
        return
    if count == 0:
        print(f"no dead jobs in queue {queue.name!r}: nothing to replay", file=out)
        return
    print(
        f"{_plural(count, 'dead job')} of queue {queue.name!r} replayed: pending, due now", file=out
    )


def _purge(queue: JobQueue, args: argparse.Namespace, out: TextIO) -> None:
    count = queue.purge(args.older_than)
    if args.json:
        _print_json({"queue": queue.name, "purged": count, "older_than": args.older_than}, out)
        return
    if args.older_than == 0:
        what = f"{_plural(count, 'finished job')} of queue {queue.name!r}"
    else:
        what = f"{_plural(count, 'job')} of queue {queue.name!r} finished more than "
        what += f"{_span(args.older_than)} ago"
    print(f"purged {what}", file=out)


def _found(queue: JobQueue, job_id: int) -> Job:
    job = queue.job(job_id)
    if job is None:
        raise _Failed(f"no job {job_id} in queue {queue.name!r} (never enqueued there, or purged)")
    return job


# -- formatting ----------------------------------------------------------------------------


def _stats_fields(stats: QueueStats) -> dict[str, Any]:
    return {**dataclasses.asdict(stats), "total": stats.total}


def _job_fields(job: Job) -> dict[str, Any]:
    fields = dataclasses.asdict(job)
    try:
        fields["kwargs"] = job.kwargs
    except ValueError:  # a payload not written by a JobQueue: shown as it is
        fields["kwargs"] = None
    return fields


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out)


def _job_row(job: Job, now: float) -> list[str]:
    tries = str(job.attempts) + ("" if job.max_attempts is None else f"/{job.max_attempts}")
    state = job.state if job.reason is None else f"{job.state} ({job.reason})"
    return [
        str(job.id),
        state,
        tries,
        job.handler,
        _ago(job.created_at, now),
        _moment(job, now),
        _short(job.last_error),
    ]


def _moment(job: Job, now: float) -> str:
    """What a job waits for, or when it ended."""
    if job.state == "pending":
        return f"due {_ago(job.next_attempt_at, now)}"
    if job.state == "running" and job.lease_until is not None:
        left = job.lease_until - now
        return f"lease {_span(left)} left" if left > 0 else f"lapsed {_span(-left)} ago"
    if job.finished_at is not None:
        return f"{job.state} {_ago(job.finished_at, now)}"
    return "-"


def _short(error: str | None) -> str:
    if error is None:
        return "-"
    line = " ".join(error.split())
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 3] + "..."


def _table(rows: Sequence[Sequence[str]], out: TextIO, *, right: frozenset[int]) -> None:
    """Aligned columns (those in ``right`` to the right); a last one on the left runs free."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    last = len(widths) - 1
    for row in rows:
        cells = [
            cell
            if i == last and i not in right
            else cell.rjust(width)
            if i in right
            else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)


def _pairs(lines: Sequence[tuple[str, str]], out: TextIO) -> None:
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        first, *rest = value.splitlines() or [""]
        print(f"{name.ljust(width)}  {first}", file=out)
        for line in rest:  # an error's traceback lines, under its first
            print(f"{' ' * width}  {line}", file=out)


def _when(moment: float | None, now: float) -> str:
    """``2023-11-14T22:13:20Z (3m ago)``; ``-`` for no time."""
    if moment is None:
        return "-"
    stamp = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    text = stamp.isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"{text} ({_ago(moment, now)})"


def _ago(moment: float, now: float) -> str:
    delta = now - moment
    if abs(delta) < 1:
        return "now"
    return f"{_span(delta)} ago" if delta > 0 else f"in {_span(-delta)}"


def _span(seconds: float) -> str:
    """A duration for people: ``12s``, ``3m 12s``, ``45m``, ``2h 5m``, ``3d 4h``, ``12d``."""
    whole = int(max(0.0, seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (name, size) in enumerate(units):
        if whole >= size or name == "s":
            count, rest = divmod(whole, size)
            if count >= 10 or name == "s":
                return f"{count}{name}"
            smaller, small_size = units[index + 1]
            part = rest // small_size
            return f"{count}{name} {part}{smaller}" if part else f"{count}{name}"
    raise AssertionError("unreachable")  # the loop always returns at "s"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _dash(value: str | None) -> str:
    return "-" if value is None or value == "" else value


def _hide_password(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if it has one) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    netloc = parts.netloc.replace(f":{password}@", ":***@")
    text = text.replace(url, urlunsplit(parts._replace(netloc=netloc)))
    return text.replace(password, "***")
