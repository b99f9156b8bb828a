"""``python -m resilience demo``: the library at work on a real local workload.

A small HTTP service on 127.0.0.1 fails at random (503s, 429s with Retry-After,
dropped connections). Worker threads fetch from it with the standard library's
urllib, once without the library and once through a :class:`~resilience.Retry`,
and the demo prints what happened and a summary table comparing the two runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection

from .backoff import Backoff
from .retry import Retry, RetryInfo

__all__ = ["run_demo", "add_arguments"]


class FlakyHandler(BaseHTTPRequestHandler):
    """Answers 200 most of the time; otherwise 503, 429 + Retry-After, or a reset."""

    server: FlakyServer
    disable_nagle_algorithm = True  # small replies must not wait for delayed ACKs

    def do_GET(self) -> None:
        outcome = self.server.pick()
        if outcome == "reset":
            self.close_connection = True
            self.connection.close()
            return
        if outcome == "503":
            self._reply(503, b"busy\n")
        elif outcome == "429":
            self._reply(429, b"slow down\n", {"Retry-After": "0.2"})
        else:
            self._reply(200, b"ok\n")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the demo's output readable


class FlakyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, failure_rate: float, seed: int) -> None:
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.failure_rate = failure_rate

    def pick(self) -> str:
        with self._lock:
            roll = self._rng.random()
            if roll >= self.failure_rate:
                outcome = "200"
            else:
                outcome = self._rng.choice(["503", "503", "429", "reset"])
            return outcome

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


@dataclass
class RunResult:
    label: str
    requests: int = 0
    successes: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    seconds: float = 0.0


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def _run(
    label: str, url: str, requests: int, workers: int, fetch: Callable[[str], bytes]
) -> RunResult:
    result = RunResult(label)
    lock = threading.Lock()

    def one(_: int) -> None:
        try:
            fetch(url)
        except Exception as error:  # the demo counts failures instead of crashing
            kind = type(error).__name__
            if isinstance(error, urllib.error.HTTPError):
                kind = f"HTTP {error.code}"
            with lock:
                result.failures[kind] += 1
        else:
            with lock:
                result.successes += 1

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(requests)))
    result.seconds = time.monotonic() - started
    result.requests = requests
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=300, help="requests per run (300)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument(
        "--failure-rate", type=float, default=0.3, help="share of requests the service fails (0.3)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the service (7)")
    parser.add_argument("--quiet", action="store_true", help="do not print each retry")


def _serve(failure_rate: float, seed: int, port_out: Connection) -> None:
    server = FlakyServer(failure_rate, seed)
    port_out.send(server.url)
    server.serve_forever()


def run_demo(args: argparse.Namespace) -> int:
    # The service runs in its own process, as a real one would: sharing the
    # client's GIL would make every request wait on the client's threads.
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    service = context.Process(target=_serve, args=(args.failure_rate, args.seed, send), daemon=True)
    service.start()
    url: str = receive.recv()
    print(
        f"flaky service on {url}: fails {args.failure_rate:.0%} of requests "
        "(503, 429 with Retry-After: 0.2, dropped connections)\n"
    )
    print_lock = threading.Lock()

    def show(info: RetryInfo) -> None:
        if not args.quiet:
            with print_lock:
                print(
                    f"  retry {info.attempt} after {type(info.exception).__name__}"
                    f" ({info.error_class}) in {info.delay:.3f}s"
                )

    try:
        plain = _run("without resilience", url, args.requests, args.workers, _fetch)
        retry = Retry(
            attempts=5,
            backoff=Backoff.exponential(0.02, 1.0, jitter="full"),
            deadline=10.0,
            name="demo-fetch",
            on_retry=show,
        )
        print(
            "with resilience: Retry(attempts=5, exponential backoff 0.02 s..1 s, "
            "full jitter, deadline 10 s)"
        )
        protected = _run("with resilience", url, args.requests, args.workers, retry(_fetch))
        protected.retries = retry.statistics.retries
    finally:
        service.terminate()
        service.join()

    print("\n| run                | requests | succeeded | failed | retries | seconds |")
    print("|--------------------|---------:|----------:|-------:|--------:|--------:|")
    for run in (plain, protected):
        failed = sum(run.failures.values())
        print(
            f"| {run.label:<18} | {run.requests:8} | {run.successes:9} | {failed:6} |"
            f" {run.retries:7} | {run.seconds:7.2f} |"
        )
    for run in (plain, protected):
        if run.failures:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in run.failures.most_common())
            print(f"\nfailures {run.label}: {kinds}")
    stats = retry.statistics
    print(
        f"\nRetry statistics: {stats.calls} calls, {stats.attempts} attempts, "
        f"{stats.retries} retries, {stats.successes} successes, {stats.give_ups} give-ups"
    )
    return 0
