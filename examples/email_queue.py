"""An email queue: retried at 1 s, 5 s, 30 s, 5 min and 30 min, then dead-lettered;
at most 100 emails a minute overall and 10 a minute per recipient; 50 per cron tick.

Run it: ``python examples/email_queue.py``. It runs on a fake clock, so the
36 minutes the retries take pass at once; in production give the queue a
real store (``sqlite:///jobs.db``) and call :func:`tick` from cron, or run
``queue.work()``.
"""

from __future__ import annotations

import smtplib
from collections import Counter, defaultdict
from typing import Any

import resilience as rs
from resilience.clock import Clock
from resilience.jobs import Job, JobQueue
from resilience.ratelimit import CompositeLimit
from resilience.storage import MemoryStore
from resilience.testing import FakeClock

SCHEDULE = [1, 5, 30, 5 * 60, 30 * 60]  # the wait before each retry
SMTP_ERRORS: dict[type[BaseException], rs.ErrorClass] = {
    smtplib.SMTPServerDisconnected: rs.ErrorClass.NETWORK,  # retried
}


class FakeSMTP:
    """Accepts mail, except that greylisting domains refuse each message twice
    and ``down.example`` never answers. Records when each recipient was tried."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.tried: defaultdict[str, list[float]] = defaultdict(list)
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.delivered: list[tuple[str, str]] = []

    def send(self, to: str, subject: str) -> None:
        self.tried[to].append(self.clock.now())
        if to.endswith("@down.example"):
            raise smtplib.SMTPServerDisconnected("connection unexpectedly closed")
        if to.endswith("@greylist.example") and self.refusals[to, subject] < 2:
            self.refusals[to, subject] += 1
            raise smtplib.SMTPServerDisconnected("451 greylisted, try again later")
        self.delivered.append((to, subject))


def email_queue(store: Any, smtp: FakeSMTP) -> JobQueue:
    """The queue, its limits and its handler. The limiters share the queue's store
    (and so its clock); ``store`` is a store object, e.g. ``MemoryStore(clock)``."""
    everyone = rs.RateLimiter("emails", rate=100, per=60, store=store)
    # burst=1: one recipient's sends are at least 6 s apart, so never more than 10 in
    # any minute (the default burst, 10, would let 10 go at once and 9 more within
    # the minute). It also stretches a recipient's 1 s and 5 s retries to 6 s.
    per_recipient = rs.RateLimiter("emails-per-recipient", rate=10, per=60, burst=1, store=store)

    def limits(job: Job) -> CompositeLimit:
        # A refusal defers the job until both limits have a token; it costs no attempt.
        return rs.RateLimiter.all(everyone, per_recipient.limit(job.kwargs["to"]))

    retry = rs.Retry(
        attempts=1 + len(SCHEDULE),  # the first try, then one retry per delay
        backoff=rs.Backoff.schedule(SCHEDULE),
        classifier=SMTP_ERRORS,
        name="emails",
    )
    queue = JobQueue("emails", store=store, retry=retry, gate=limits)
    queue.handler(name="send_email")(smtp.send)
    return queue


def tick(queue: JobQueue) -> None:
    """One cron run: the 50 most urgent due emails."""
    queue.run_once(limit=50)


def simulate(store: Any, clock: FakeClock, emails: int = 120) -> tuple[JobQueue, FakeSMTP]:
    """Enqueue ``emails`` emails (a quarter to one busy recipient, some greylisted,
    one to a dead server), then tick every second of fake time until all settle."""
    smtp = FakeSMTP(clock)
    queue = email_queue(store, smtp)
    for n in range(emails):
        to = "fan@example.com" if n % 4 == 0 else f"user{n}@example.com"
        if n % 9 == 1:
            to = f"user{n}@greylist.example"
        queue.enqueue("send_email", to=to, subject=f"Order {n} shipped", key=f"order-{n}")
    queue.enqueue("send_email", to="nobody@down.example", subject="Welcome")
    while (stats := queue.stats()).pending + stats.running:
        tick(queue)
        clock.advance(1.0)
    return queue, smtp


def most_in_a_minute(times: list[float]) -> int:
    """The most of ``times`` inside any 60-second window."""
    return max((sum(t <= u < t + 60 for u in times) for t in times), default=0)


def main(emails: int = 120) -> None:
    clock = FakeClock(1_700_000_000.0)
    store = MemoryStore(clock)
    start = clock.now()
    queue, smtp = simulate(store, clock, emails)
    took = clock.now() - start
    print(f"{len(smtp.delivered)} delivered, {queue.stats().dead} dead, {took:.0f} s of fake time")
    busiest = max(smtp.tried, key=lambda to: len(smtp.tried[to]))
    tries = smtp.tried[busiest]
    print(f"  {busiest}: {len(tries)} sends, at most {most_in_a_minute(tries)} in a minute")
    for job in queue.dead_letters():
        to = job.kwargs["to"]
        tried = [round(at - start) for at in smtp.tried[to]]
        print(f"  dead: {to}, tried at {tried} s: {job.last_error} ({job.reason})")


if __name__ == "__main__":
    main()
