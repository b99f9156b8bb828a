"""``python -m resilience demo``: the library at work on a real local workload.

A small HTTP service on 127.0.0.1, in a process of its own, misbehaves at
random (503s, 429s with ``Retry-After``, latency spikes) and goes down
completely for a short window in the middle of each run. Worker threads send
the same paced workload to it twice: with plain ``httpx``, then with an
``httpx.Client`` on a :class:`~resilience.integrations.httpx.ResilientTransport`
(the standard HTTP pipeline, its timings scaled to the demo, plus a rate
limiter keyed per host). A line shows the progress live, from telemetry events
and policy statistics, and a table compares the two runs.

Only this module's :func:`run_demo` needs httpx (the ``httpx`` extra).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    import httpx

    from .breaker import CircuitBreaker
    from .errors import StoreUnavailable
    from .ratelimit import RateLimiter
    from .retry import Retry

__all__ = ["add_arguments", "run_demo"]

RETRY_AFTER = "1"
"""What the service's 429s ask for, in seconds."""

STORE_CHECK_SECONDS = 5.0
"""How long the check made before the demo starts waits for the store's answer."""

# Exit statuses of the command (also in its --help).
EXIT_OK = 0
EXIT_STORE_FAILED = 1  # the runs completed, but the store failed during them
EXIT_USAGE = 2  # bad options, or a missing extra
EXIT_STORE_UNAVAILABLE = 3  # the store did not answer the check made before starting

# -- the flaky service -----------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """How often the service misbehaves; the outage is a share of each run."""

    unavailable: float = 0.12  # 503
    throttled: float = 0.06  # 429 with Retry-After
    slow: float = 0.05  # a latency spike
    spike_seconds: float = 1.5
    outage_start: float = 0.45  # share of the run
    outage_length: float = 0.12  # share of the run (at least 0.5 s)


class FlakyHandler(BaseHTTPRequestHandler):
    """``GET /reset?seed=&duration=`` starts a run; any other GET is served or failed."""

    server: FlakyServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small replies must not wait for delayed ACKs

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/reset":
            query = parse_qs(parts.query)
            self.server.reset(int(query["seed"][0]), float(query["duration"][0]))
            self._reply(200, b"reset\n")
            return
        outcome, delay = self.server.pick()
        if outcome == "down":
            # The service is gone: the connection closes without an answer.
            self.close_connection = True
            return
        time.sleep(delay)
        if outcome == "503":
            self._reply(503, b"busy\n")
        elif outcome == "429":
            self._reply(429, b"slow down\n", {"Retry-After": RETRY_AFTER})
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up on a slow reply close their end: not news

    def __init__(self, faults: Faults) -> None:
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.faults = faults
        self._lock = threading.Lock()
        self._rng = random.Random(0)
        self._started = time.monotonic()
        self._outage = (0.0, 0.0)

    def reset(self, seed: int, duration: float) -> None:
        """Start a run: the same seed and duration give the same faults."""
        with self._lock:
            self._rng = random.Random(seed)
            self._started = time.monotonic()
            start = duration * self.faults.outage_start
            self._outage = (start, start + max(0.5, duration * self.faults.outage_length))

    def pick(self) -> tuple[str, float]:
        """An outcome (``200``, ``503``, ``429``, ``down``) and how long to wait first."""
        with self._lock:
            elapsed = time.monotonic() - self._started
            if self._outage[0] <= elapsed < self._outage[1]:
                return "down", 0.0
            roll = self._rng.random()
            delay = self._rng.uniform(0.002, 0.02)
        faults = self.faults
        if roll < faults.unavailable:
            return "503", delay
        roll -= faults.unavailable
        if roll < faults.throttled:
            return "429", delay
        roll -= faults.throttled
        if roll < faults.slow:
            return "200", faults.spike_seconds
        return "200", delay

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def _serve(faults: Faults, url_out: Connection) -> None:
    server = FlakyServer(faults)
    url_out.send(server.url)
    server.serve_forever()


# -- the workload ---------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    requests: int = 0
    successes: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    retries: int = 0
    rejections: int = 0
    limiter_waits: int = 0
    seconds: float = 0.0
    store_failures: int = 0
    store_error: str | None = None
    """The first store failure seen (redacted), if the store failed during the run."""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def success_rate(self) -> float:
        return self.successes / self.requests if self.requests else 0.0

    def percentile(self, share: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Live:
    """What the progress line shows; the telemetry subscriber updates it."""

    retries: int = 0
    limiter_waits: int = 0
    breaker: str = "closed"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: Any) -> None:
        from .telemetry import events

        if not event.policy.startswith("demo"):
            return
        with self.lock:
            if isinstance(event, events.RetryScheduled):
                self.retries += 1
            elif isinstance(event, events.RateLimitWaited):
                self.limiter_waits += 1
            elif isinstance(event, events.CircuitStateChanged):
                self.breaker = event.new_state


def _failure_kind(error: BaseException) -> str:
    name = type(error).__name__
    return {"RemoteProtocolError": "disconnected", "ReadTimeout": "read timeout"}.get(name, name)


def _store_failure(error: BaseException) -> StoreUnavailable | None:
    """The store outage behind ``error``, if any (itself, or a cause of it)."""
    from .errors import StoreUnavailable

    seen: BaseException | None = error
    for _ in range(8):  # a short chain; never loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, StoreUnavailable):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _shown(text: str) -> str:
    """``text`` fit for the terminal: secrets (a password in a URL) masked, one line."""
    from .telemetry.redaction import get_redactor

    return " ".join(get_redactor().redact_text(text).split())


class Progress:
    """One refreshing line on a terminal; a plain line a second otherwise."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self._last_plain = 0.0
        self._width = 0

    def show(self, line: str, final: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            # Pad with spaces over what a longer previous line left.
            self._width = max(self._width, len(line))
            self.out.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self.out.flush()
            return
        now = time.monotonic()
        if final or now - self._last_plain >= 1.0:
            self._last_plain = now
            print(line, file=self.out, flush=True)


def _drive(
    result: RunResult,
    client: httpx.Client,
    url: str,
    *,
    seconds: float,
    rate: float,
    workers: int,
    status: Callable[[], str],
    progress: Progress,
) -> RunResult:
    """``rate`` requests a second for ``seconds``, each sent when it is due (an open
    workload, as users make one) by a pool of ``workers`` threads. A latency runs
    from when the request was due, so time spent queued for a thread counts."""
    lock = threading.Lock()
    total = max(1, round(seconds * rate))

    def one(number: int, due: float) -> None:
        kind: str | None = None
        try:
            response = client.get(f"{url}/items/{number}")
            if response.status_code >= 400:
                kind = f"HTTP {response.status_code}"
        except Exception as error:  # the demo counts failures instead of crashing
            kind = _failure_kind(error)
            outage = _store_failure(error)
        else:
            outage = None
        latency = time.monotonic() - due
        with lock:
            result.requests += 1
            result.latencies.append(latency)
            if kind is None:
                result.successes += 1
            else:
                result.failures[kind] += 1
            if outage is not None:
                result.store_failures += 1
                if result.store_error is None:
                    result.store_error = _shown(f"{outage.store}: {outage.reason}")

    def line(elapsed: float) -> str:
        with lock:
            return (
                f"{result.label:<18} {elapsed:5.1f}s  requests {result.requests:4}/{total}"
                f"  ok {result.successes:4}  failed {result.failed:4}"
            )

    started = time.monotonic()
    with ThreadPoolExecutor(workers, thread_name_prefix="demo-client") as pool:

        def dispatch() -> None:
            for number in range(total):
                due = started + number / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pool.submit(one, number, due)

        dispatcher = threading.Thread(target=dispatch, daemon=True)
        dispatcher.start()
        while True:
            time.sleep(0.1)
            if not dispatcher.is_alive() and result.requests >= total:
                break
            progress.show(line(time.monotonic() - started) + status())
    result.seconds = time.monotonic() - started
    progress.show(line(result.seconds) + status(), final=True)
    return result


@dataclass
class Policies:
    retry: Retry
    breaker: CircuitBreaker
    limiter: RateLimiter


def _resilient_transport(store: Any, rate: float) -> tuple[httpx.BaseTransport, Policies]:
    """The standard HTTP pipeline, its timings scaled to a demo of seconds, with a
    rate limiter keyed per host between the retry and the breaker (so that
    retries are paced too), the breaker and the limiter on ``store``."""
    from .breaker import CircuitBreaker
    from .config import http_pipeline
    from .integrations.httpx import ResilientTransport
    from .pipeline import Pipeline
    from .ratelimit import RateLimiter
    from .retry import Retry

    standard = http_pipeline(
        "demo",
        total_timeout={"seconds": 4.0},
        retry={
            "attempts": 6,
            "backoff": {"kind": "exponential", "base": 0.1, "cap": 1.0, "jitter": "full"},
        },
        breaker={
            "failure_ratio": 0.5,
            "minimum_calls": 20,
            "window": 2.0,
            "break_duration": 1.0,
            "store": store,
        },
        attempt_timeout={"seconds": 1.0},
    )
    limiter = RateLimiter(
        "demo.rate_limiter", rate=rate * 2, per=1.0, burst=30, max_wait=2.0, store=store
    )

    def host_of(request: httpx.Request, *_: object) -> str:
        return request.url.host

    per_host = limiter.limit(host_of)
    policies = list(standard.policies)
    retry = next(p for p in policies if isinstance(p, Retry))
    breaker = next(p for p in policies if isinstance(p, CircuitBreaker))
    policies.insert(policies.index(breaker), per_host)
    pipeline = Pipeline(*policies, name="demo")
    return ResilientTransport(pipeline), Policies(retry, breaker, limiter)


def _check_store(store: Any, seconds: float = STORE_CHECK_SECONDS) -> str | None:
    """One cheap call to ``store`` (a limiter reading its tokens), waited for at
    most ``seconds``: ``None`` if the store answered, else what is wrong (redacted)."""
    from .errors import StoreUnavailable
    from .ratelimit import RateLimiter

    limiter = RateLimiter("demo.store_check", rate=1.0, store=store)
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            limiter.tokens()
        except BaseException as error:  # reported to the caller, not raised in a thread
            outcome.append(error)
        else:
            outcome.append(None)

    # In a thread: a store that hangs (a frozen server) must not hang the command.
    checker = threading.Thread(target=check, name="demo-store-check", daemon=True)
    checker.start()
    checker.join(seconds)
    if not outcome:
        return f"no answer within {seconds:g} s"
    error = outcome[0]
    if error is None:
        return None
    if isinstance(error, StoreUnavailable):
        return _shown(error.reason)
    return _shown(f"{type(error).__name__}: {error}")


def _limiter_waits(policies: Policies, live: Live, result: RunResult) -> int:
    """The limiter's waits: from its statistics (which read the store), or, with the
    store down, from the telemetry events counted during the run."""
    from .errors import StoreUnavailable

    try:
        return policies.limiter.statistics.waited
    except StoreUnavailable as error:
        if result.store_error is None:
            result.store_error = _shown(f"{error.store}: {error.reason}")
        with live.lock:
            return live.limiter_waits


# -- OpenTelemetry ---------------------------------------------------------------------


def _span_line(span: Any) -> str:
    milliseconds = (span.end_time - span.start_time) / 1e6 if span.end_time else 0.0
    attributes = span.attributes or {}
    outcome = attributes.get("resilience.outcome")
    if outcome is None:
        outcome = "error" if span.status.status_code.name == "ERROR" else "ok"
    return f"span {span.name!r} {milliseconds:.1f} ms {outcome}\n"


def _configure_otel(kind: str) -> Callable[[], None] | str:
    """A shutdown function, or the message explaining why it cannot be done."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        return (
            f"--otel {kind} needs the OpenTelemetry SDK: pip install 'resilience[httpx,otel-sdk]'"
        )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(formatter=_span_line)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


# -- the command -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=8.0,
        metavar="SECONDS",
        help="seconds of load per run; the two runs take a little over twice that (8)",
    )
    parser.add_argument(
        "--store",
        default="memory://",
        metavar="URL",
        help="where the breaker and the limiter keep their state: memory://, "
        "sqlite:///demo.db, redis://…, postgresql://… (memory://)",
    )
    parser.add_argument(
        "--otel",
        choices=["console"],
        help="configure the OpenTelemetry SDK and print the spans (needs the otel-sdk extra)",
    )
    parser.add_argument(
        "--workers", type=int, default=32, help="client threads: requests at most in flight (32)"
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="requests a second, over all clients (50)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the service (7)")
    parser.add_argument("--quiet", action="store_true", help="no progress: print the summary only")


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |", file=out)
        if number == 0:
            rule = ["-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)]
            print("|" + "|".join(rule) + "|", file=out)


def _summary(plain: RunResult, protected: RunResult, out: TextIO) -> None:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f}"

    rows = [
        [
            "run",
            "requests",
            "succeeded",
            "failed",
            "retries",
            "breaker rejections",
            "limiter waits",
            "p50 ms",
            "p95 ms",
            "wall s",
        ]
    ]
    for run, extra in ((plain, False), (protected, True)):
        rows.append(
            [
                run.label,
                str(run.requests),
                f"{run.successes} ({run.success_rate:.1%})",
                str(run.failed),
                str(run.retries) if extra else "-",
                str(run.rejections) if extra else "-",
                str(run.limiter_waits) if extra else "-",
                ms(run.percentile(0.5)),
                ms(run.percentile(0.95)),
                f"{run.seconds:.1f}",
            ]
        )
    print(file=out)
    _table(rows, out)
    kinds = sorted(set(plain.failures) | set(protected.failures))
    if kinds:
        print(file=out)
        failures = [["failed by kind", plain.label, protected.label]]
        failures += [[k, str(plain.failures[k]), str(protected.failures[k])] for k in kinds]
        _table(failures, out)
    print(
        f"\nsuccess rate: {plain.label} {plain.success_rate:.1%}, "
        f"{protected.label} {protected.success_rate:.1%}",
        file=out,
    )
    if protected.store_error is not None:
        print(
            f"\nthe store failed during the run ({protected.store_error}): "
            f"{protected.store_failures} request(s) {protected.label} failed with "
            "StoreUnavailable (counted above); the comparison is not representative",
            file=out,
        )


def run_demo(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        import httpx
    except ImportError:
        print(
            "the demo needs httpx: pip install 'resilience[httpx]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from .storage import store_from_url
    from .telemetry import subscribe

    if args.duration <= 0 or args.workers < 1 or args.rate <= 0:
        print("--duration, --workers and --rate must be positive", file=sys.stderr)
        return EXIT_USAGE
    shown_store = _shown(args.store)
    try:
        store = store_from_url(args.store)
    except Exception as error:
        print(f"--store {shown_store}: {_shown(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    problem = _check_store(store)
    if problem is not None:
        print(
            f"--store {shown_store}: the store is unavailable ({problem}); "
            "start it, or pick another with --store (memory:// needs nothing)",
            file=sys.stderr,
        )
        if not problem.startswith("no answer"):  # a hung store may not close either
            _close(store)
        return EXIT_STORE_UNAVAILABLE
    shutdown_otel: Callable[[], None] | None = None
    if args.otel:
        configured = _configure_otel(args.otel)
        if isinstance(configured, str):
            print(configured, file=sys.stderr)
            _close(store)
            return EXIT_USAGE
        shutdown_otel = configured

    # The service runs in its own process, as a real one would: sharing the
    # client's GIL would make every request wait on the client's threads.
    faults = Faults()
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    service = context.Process(target=_serve, args=(faults, send), daemon=True)
    service.start()
    url: str = receive.recv()
    seconds = float(args.duration)
    outage_start = seconds * faults.outage_start
    outage_end = outage_start + max(0.5, seconds * faults.outage_length)
    print(
        f"flaky service on {url}: {faults.unavailable:.0%} 503s, {faults.throttled:.0%} 429s "
        f"(Retry-After: {RETRY_AFTER}), {faults.slow:.0%} {faults.spike_seconds:g} s latency "
        f"spikes, down from {outage_start:.1f} s to {outage_end:.1f} s of each run",
        file=out,
    )
    print(
        f"workload: {args.rate:g} requests/s for {seconds:g} s by up to {args.workers} threads, "
        f"twice; store {shown_store}",
        file=out,
    )
    print(
        "with resilience: the standard HTTP pipeline, timings scaled to the demo (total "
        "timeout 4 s, 6 attempts with exponential backoff 0.1-1 s and full jitter, breaker "
        "opening at 50 % failures over 2 s, attempt timeout 1 s), and a rate limiter per "
        f"host ({args.rate * 2:g}/s) before the breaker",
        file=out,
    )
    progress = Progress(out, args.quiet)
    live = Live()
    unsubscribe = subscribe(live.on_event)
    control = httpx.Client(trust_env=False)
    try:
        control.get(f"{url}/reset", params={"seed": args.seed, "duration": seconds})
        with httpx.Client(timeout=6.0, trust_env=False) as client:
            plain = _drive(
                RunResult("without resilience"),
                client,
                url,
                seconds=seconds,
                rate=args.rate,
                workers=args.workers,
                status=lambda: "",
                progress=progress,
            )
        transport, policies = _resilient_transport(store, args.rate)

        def status() -> str:
            with live.lock:
                return (
                    f"  retries {live.retries:4}  breaker {live.breaker:<9}"
                    f"  limiter waits {live.limiter_waits:4}"
                )

        control.get(f"{url}/reset", params={"seed": args.seed, "duration": seconds})
        with httpx.Client(transport=transport, timeout=6.0, trust_env=False) as client:
            protected = _drive(
                RunResult("with resilience"),
                client,
                url,
                seconds=seconds,
                rate=args.rate,
                workers=args.workers,
                status=status,
                progress=progress,
            )
        protected.retries = policies.retry.statistics.retries
        protected.rejections = policies.breaker.statistics.rejections
        protected.limiter_waits = _limiter_waits(policies, live, protected)
    finally:
        unsubscribe()
        control.close()
        service.terminate()
        service.join()
        if shutdown_otel is not None:
            shutdown_otel()
        _close(store)

    _summary(plain, protected, out)
    return EXIT_OK if protected.store_error is None else EXIT_STORE_FAILED


def _close(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()
