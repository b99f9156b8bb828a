"""Webhook delivery: retried at 1 min, 5 min, 30 min, 2 h and 24 h; 10 per batch every
5 minutes. A 4xx answer is permanent (dead at once; 408, 425 and 429 excepted), a
429 waits its Retry-After, a 5xx is retried.

Run it: ``python examples/webhook_retries.py``. It posts to a real HTTP server
on 127.0.0.1 (started here, on a free port) with urllib, and runs the queue on a
fake clock, so a day of retries passes at once.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import resilience as rs
from resilience.clock import Clock
from resilience.jobs import JobQueue
from resilience.storage import MemoryStore
from resilience.testing import FakeClock

SCHEDULE = [60, 5 * 60, 30 * 60, 2 * 3600, 24 * 3600]
# What each path answers, call after call (the last answer repeats).
ANSWERS: dict[str, list[tuple[int, dict[str, str]]]] = {
    "/ok": [(200, {})],
    "/flaky": [(500, {}), (200, {})],
    "/gone": [(410, {})],
    "/busy": [(429, {"Retry-After": "120"}), (200, {})],
}


class Receiver(ThreadingHTTPServer):
    """The webhook consumer: answers each event per ``ANSWERS``, and records the
    (fake) time of every delivery attempt, per path and event."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.clock = clock
        self.hits: defaultdict[tuple[str, int], list[float]] = defaultdict(list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Answer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver = cast(Receiver, self.server)
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        hits = receiver.hits[self.path, event["id"]]
        hits.append(receiver.clock.now())
        answers = ANSWERS.get(self.path, [(404, {})])
        status, headers = answers[min(len(hits), len(answers)) - 1]
        self.send_response(status)
        for name, value in {**headers, "Content-Length": "0"}.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@contextmanager
def receiver(clock: Clock) -> Iterator[Receiver]:
    server = Receiver(clock)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def webhook_queue(store: Any) -> JobQueue:
    retry = rs.Retry(
        attempts=1 + len(SCHEDULE),
        backoff=rs.Backoff.schedule(SCHEDULE),
        max_delay=24 * 3600,  # also the longest Retry-After honoured
        name="webhooks",
    )
    queue = JobQueue("webhooks", store=store, retry=retry)

    @queue.handler(name="deliver")
    def deliver(url: str, event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except urllib.error.HTTPError as error:
            # The library classifies it (4xx permanent, 429 with its Retry-After, 5xx
            # transient); close the response it carries first.
            error.close()
            raise

    return queue


def tick(queue: JobQueue) -> None:
    """What runs every 5 minutes: a batch of 10."""
    queue.run_once(limit=10)


def simulate(store: Any, clock: FakeClock, url: str, hooks: int = 24) -> JobQueue:
    """Enqueue ``hooks`` deliveries over the four paths; tick every 5 minutes until
    none is left."""
    queue = webhook_queue(store)
    paths = list(ANSWERS)
    for n in range(hooks):
        event = {"id": n, "type": "order.paid"}
        queue.enqueue("deliver", url=url + paths[n % len(paths)], event=event, key=f"evt-{n}")
    while (stats := queue.stats()).pending + stats.running:
        tick(queue)
        clock.advance(5 * 60)
    return queue


def main(hooks: int = 24) -> None:
    clock = FakeClock(1_700_000_000.0)
    start = clock.now()
    with receiver(clock) as server:
        queue = simulate(MemoryStore(clock), clock, server.url, hooks)
    stats = queue.stats()
    print(f"{stats.done} delivered, {stats.dead} dead, in {(clock.now() - start) / 60:.0f} min")
    for job in queue.jobs(limit=len(ANSWERS)):  # the first event sent to each path
        path = job.kwargs["url"].removeprefix(server.url)
        tried = [round(at - start) for at in server.hits[path, job.kwargs["event"]["id"]]]
        why = f" ({job.reason})" if job.reason else ""
        print(f"  {path:7} {job.state}{why}, tried at {tried} s; last error: {job.last_error}")


if __name__ == "__main__":
    main()
