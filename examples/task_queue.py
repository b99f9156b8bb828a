"""A task queue: priorities (1 runs first), 5 tasks at a time, a dead-letter queue
kept for review and replay, and finished tasks cleaned up after 24 hours.

Run it: ``python examples/task_queue.py`` (on a fake clock: the day passes at once).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import resilience as rs
from resilience.jobs import JobQueue
from resilience.storage import MemoryStore
from resilience.testing import FakeClock

DAY = 24 * 3600


class Thumbnailer:
    """The work: fails for corrupt images until they are uploaded again, and once
    for images on a flaky disk. Records what ran, and how many ran at once."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.repaired: set[str] = set()
        self.flaked: set[str] = set()
        self.running = self.most_at_once = 0
        self._lock = threading.Lock()

    def thumbnail(self, image: str, size: int) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(0.002)  # decoding, resizing: real work takes a while
            if image.endswith(".corrupt") and image not in self.repaired:
                raise ValueError(f"{image}: not an image")  # permanent: dead at once
            if image.startswith("nfs/") and image not in self.flaked:
                self.flaked.add(image)
                raise ConnectionError(f"{image}: stale file handle")  # retried
            with self._lock:
                self.ran.append(image)
        finally:
            with self._lock:
                self.running -= 1


def task_queue(store: Any, work: Thumbnailer) -> JobQueue:
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.exponential(10, 300), name="tasks")
    queue = JobQueue("tasks", store=store, retry=retry, retention=DAY)
    queue.handler(name="thumbnail")(work.thumbnail)
    return queue


def enqueue(queue: JobQueue, images: int) -> None:
    """Avatars (priority 1) are enqueued after archive scans (priority 9), and run first."""
    for n in range(images):
        name = f"nfs/scan{n}.png" if n % 5 == 4 else f"scan{n}.png"
        queue.enqueue("thumbnail", image=name, size=1024, priority=9)
    for n in range(images // 4):
        name = f"avatar{n}.corrupt" if n % 3 == 2 else f"avatar{n}.png"
        queue.enqueue("thumbnail", image=name, size=128, priority=1)


def run(queue: JobQueue, clock: FakeClock) -> None:
    """Workers, 5 tasks at a time, until nothing is left but dead letters."""
    while queue.stats().pending:
        queue.work(concurrency=5, until_empty=True)  # returns when nothing is due
        clock.advance(60)  # the retries fall due


def review(queue: JobQueue, work: Thumbnailer) -> int:
    """An operator's look at the dead letters: re-upload each image, replay it."""
    replayed = 0
    for job in queue.dead_letters():
        print(f"  dead: {job.kwargs['image']}: {job.last_error} ({job.reason})")
        work.repaired.add(job.kwargs["image"])
        replayed += queue.replay(job.id)
    return replayed


def main(images: int = 40) -> None:
    clock = FakeClock(1_700_000_000.0)
    work = Thumbnailer()
    queue = task_queue(MemoryStore(clock), work)
    enqueue(queue, images)
    run(queue, clock)
    print(f"ran {len(work.ran)} tasks, at most {work.most_at_once} at once; first: {work.ran[:3]}")
    print(f"replayed {review(queue, work)} dead letters")
    run(queue, clock)
    stats = queue.stats()
    print(f"done {stats.done}, dead {stats.dead}")
    clock.advance(DAY + 1)
    # What the workers do by themselves (retention=DAY, at most once a minute):
    print(f"a day later, purged {queue.purge(older_than=DAY)}; left {queue.stats().total}")


if __name__ == "__main__":
    main()
